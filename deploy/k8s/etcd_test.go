package k8s_test

import (
	"net/url"
	"path"
	"reflect"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/agentictrust/atf/broker/config"
)

// readyPath is atfd's readiness check on its metrics port,
// broker/metrics.ReadyPath (not imported: it would bring the broker's
// dependencies into this module); broker's TestObservability checks that
// atfd serves it.
const readyPath = "/readyz"

// etcdReplicas is how many replicas the etcd mode runs: one can be drained
// or lost while two serve.
const etcdReplicas = 3

// etcdSecretKeys are the keys of the Secret with etcd's client
// certificate, by configuration key: those of a kubernetes.io/tls Secret
// with its CA, which cert-manager writes (components/etcd/patch.yaml).
var etcdSecretKeys = map[string]string{"ca_file": "ca.crt", "cert_file": "tls.crt", "key_file": "tls.key"}

// checkEtcd checks the etcd mode (components/etcd): three replicas spread
// over nodes, no volume, a PodDisruptionBudget that lets one go at a time,
// readiness from atfd's health, etcd's client certificate from a Secret at
// the paths the configuration names, and egress to etcd's port.
func checkEtcd(t *testing.T, d deployment, cfg config.Config) {
	sts := get[appsv1.StatefulSet](t, d, "StatefulSet")
	pod := sts.Spec.Template
	c := d.container(t)
	if sts.Spec.Replicas == nil || *sts.Spec.Replicas != etcdReplicas {
		t.Errorf("StatefulSet replicas %v, want %d", val(sts.Spec.Replicas), etcdReplicas)
	}
	// No state on the pod: the store and the audit trail are in etcd.
	if len(sts.Spec.VolumeClaimTemplates) != 0 || sts.Spec.PersistentVolumeClaimRetentionPolicy != nil {
		t.Errorf("StatefulSet has %d volume claim templates, retention %v: the store is in etcd", len(sts.Spec.VolumeClaimTemplates), val(sts.Spec.PersistentVolumeClaimRetentionPolicy))
	}
	for _, m := range c.VolumeMounts {
		if !m.ReadOnly {
			t.Errorf("mount %s (%s) is writable: nothing on the pod is state in the etcd mode", m.MountPath, m.Name)
		}
	}
	if n := disruptions(t, d, etcdReplicas); n < 1 || etcdReplicas-n < 2 {
		t.Errorf("PodDisruptionBudget allows %d of %d replicas to go: want at least 1, leaving at least 2", n, etcdReplicas)
	}
	// store.etcd.replica is the host name: the pod's own, stable name.
	if pod.Spec.Hostname != "" || (pod.Spec.SetHostnameAsFQDN != nil && *pod.Spec.SetHostnameAsFQDN) {
		t.Errorf("pod hostname %q, setHostnameAsFQDN %v: the host name must be the pod's name, the replica's", pod.Spec.Hostname, val(pod.Spec.SetHostnameAsFQDN))
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != readyPath {
		t.Errorf("readiness probe %v: want GET %s (atfd's health: NOT_SERVING while it cannot read etcd)", p, readyPath)
	}
	// /metrics reads the store twice, each bounded by store.etcd.timeout;
	// broker's TestHAQuorumLostFailsClosed checks it answers within three.
	if p := c.LivenessProbe; p == nil || time.Duration(p.TimeoutSeconds)*time.Second < 3*cfg.Store.Etcd.Timeout {
		t.Errorf("liveness probe %v: want a timeout of at least three times store.etcd.timeout (%s), or an etcd outage restarts every replica", p, cfg.Store.Etcd.Timeout)
	}
	checkSpread(t, pod)
	checkEtcdTLS(t, d, cfg.Store.Etcd)
	checkEtcdEgress(t, d, cfg.Store.Etcd)
}

// checkSpread checks that no two replicas share a node and that they
// spread over zones.
func checkSpread(t *testing.T, pod corev1.PodTemplateSpec) {
	var anti []corev1.PodAffinityTerm
	if a := pod.Spec.Affinity; a != nil && a.PodAntiAffinity != nil {
		anti = a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution
	}
	if !slices.ContainsFunc(anti, func(term corev1.PodAffinityTerm) bool {
		return term.TopologyKey == corev1.LabelHostname && len(term.Namespaces) == 0 && term.NamespaceSelector == nil && selects(t, term.LabelSelector, pod.Labels)
	}) {
		t.Errorf("pod anti-affinity %v: want a required term on %s selecting atfd's pods", anti, corev1.LabelHostname)
	}
	if !slices.ContainsFunc(pod.Spec.TopologySpreadConstraints, func(c corev1.TopologySpreadConstraint) bool {
		return c.TopologyKey == corev1.LabelTopologyZone && c.MaxSkew == 1 && selects(t, c.LabelSelector, pod.Labels)
	}) {
		t.Errorf("topology spread %v: want maxSkew 1 on %s selecting atfd's pods", pod.Spec.TopologySpreadConstraints, corev1.LabelTopologyZone)
	}
}

// checkEtcdTLS checks that ca_file, cert_file and key_file are keys of a
// Secret mounted read-only where the configuration names them, readable
// by no one but atfd's user and group.
func checkEtcdTLS(t *testing.T, d deployment, e *config.EtcdConfig) {
	for key, file := range map[string]string{"ca_file": e.CAFile, "cert_file": e.CertFile, "key_file": e.KeyFile} {
		m, v := mountAt(t, d, path.Dir(file))
		s := v.Secret
		if s == nil || !m.ReadOnly {
			t.Errorf("store.etcd.%s %s: not on a read-only Secret volume", key, file)
			continue
		}
		if s.Optional != nil && *s.Optional {
			t.Errorf("Secret %s is optional: atfd cannot start without it", s.SecretName)
		}
		if s.DefaultMode == nil || *s.DefaultMode&0o007 != 0 {
			t.Errorf("Secret %s: mode %#o, want none for others (0440)", s.SecretName, val(s.DefaultMode))
		}
		secretKey := path.Base(file)
		if len(s.Items) > 0 {
			i := slices.IndexFunc(s.Items, func(it corev1.KeyToPath) bool { return it.Path == path.Base(file) })
			if i < 0 {
				t.Errorf("store.etcd.%s %s: Secret %s's items leave it out", key, file, s.SecretName)
				continue
			}
			secretKey = s.Items[i].Key
		}
		if want := etcdSecretKeys[key]; secretKey != want {
			t.Errorf("store.etcd.%s %s: Secret %s's key %q, want %q", key, file, s.SecretName, secretKey, want)
		}
	}
}

// checkEtcdEgress checks that the NetworkPolicies let atfd reach every
// endpoint's port.
func checkEtcdEgress(t *testing.T, d deployment, e *config.EtcdConfig) {
	nps := networkPolicies(t, d)
	for _, ep := range e.Endpoints {
		u, err := url.Parse(ep)
		if err != nil {
			t.Fatalf("store.etcd.endpoints %q: %v", ep, err)
		}
		port := hostPort(t, "store.etcd.endpoints", u.Host)
		allowed := !slices.ContainsFunc(nps, func(np *networkingv1.NetworkPolicy) bool {
			return slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		})
		for _, np := range nps {
			for _, rule := range np.Spec.Egress {
				allowed = allowed || len(rule.Ports) == 0 || slices.ContainsFunc(rule.Ports, func(p networkingv1.NetworkPolicyPort) bool {
					return (p.Protocol == nil || *p.Protocol == corev1.ProtocolTCP) && p.Port != nil && p.Port.IntValue() == int(port)
				})
			}
		}
		if !allowed {
			t.Errorf("no NetworkPolicy lets atfd reach etcd at %s (TCP %d)", ep, port)
		}
	}
}

// checkEtcdConfig checks that the etcd mode's configuration is the
// base's with store.etcd instead of store_path, and asks the least of
// the cluster that atfd accepts.
func checkEtcdConfig(t *testing.T, cfg config.Config) {
	e := cfg.Store.Etcd
	if e == nil {
		t.Fatal("the etcd mode's configuration has no store.etcd")
	}
	if e.MaxTxnOps < config.MinEtcdTxnOps {
		t.Errorf("store.etcd.max_txn_ops %d, want at least %d", e.MaxTxnOps, config.MinEtcdTxnOps)
	}
	base := loadBase(t).config(t)
	same := cfg
	same.Store, same.Audit.Dir = base.Store, base.Audit.Dir
	same.StorePath = base.StorePath
	if !reflect.DeepEqual(same, base) {
		t.Errorf("the etcd mode's configuration differs from config/atfd.yaml in more than the store:\n%+v\n%+v", same, base)
	}
}
