// Built in GOPATH mode (GO111MODULE=off, scripts/provision-kube-apiserver), where nothing here is read but the
// file's presence: Go's "minimal module compatibility" resolves /vN import paths (k8s.io/klog/v2,
// sigs.k8s.io/structured-merge-diff/v6 ...) to Debian's /vN-less directories only for importing code that has a go.mod.
module streamcodec.test/kubeapiserver

go 1.26
