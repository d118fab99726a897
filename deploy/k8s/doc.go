// Package k8s holds no code. Its directory is atfd's Kubernetes deployment
// (kustomization.yaml, the manifests it lists, the configuration under
// config/, alternative components under components/: components/etcd is
// the mode with three replicas on a store in etcd), and its tests decode
// every manifest strictly into the Kubernetes API types and check the
// manifests against atfd's configuration, read by atfd's own loader, in
// both modes: one replica on a bbolt file, and three on etcd.
//
// It is a module of its own so that the broker's module does not depend on
// the Kubernetes API packages.
package k8s
