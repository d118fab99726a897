package k8s_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/agentictrust/atf/broker/config"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/agentictrust/atf/deploy/policy"
)

// clusterSPIFFEID is the part of spire-controller-manager's
// spire.spiffe.io/v1alpha1 ClusterSPIFFEID that these manifests use, with
// its field names; any other field fails the strict decoding until it is
// added here on purpose.
type clusterSPIFFEID struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		SPIFFEIDTemplate          string                `json:"spiffeIDTemplate"`
		NamespaceSelector         *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
		PodSelector               *metav1.LabelSelector `json:"podSelector,omitempty"`
		WorkloadSelectorTemplates []string              `json:"workloadSelectorTemplates,omitempty"`
		ClassName                 string                `json:"className,omitempty"`
	} `json:"spec"`
}

// kustomization is the part of kustomize's Kustomization and Component
// that these files use.
type kustomization struct {
	metav1.TypeMeta    `json:",inline"`
	Resources          []string `json:"resources,omitempty"`
	Components         []string `json:"components,omitempty"`
	ConfigMapGenerator []struct {
		Name      string   `json:"name"`
		Namespace string   `json:"namespace,omitempty"`
		Behavior  string   `json:"behavior,omitempty"`
		Files     []string `json:"files"`
	} `json:"configMapGenerator,omitempty"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
		Digest  string `json:"digest,omitempty"`
	} `json:"images,omitempty"`
	Patches []struct {
		Path string `json:"path"`
	} `json:"patches,omitempty"`
}

// kinds maps apiVersion/kind to the Go type a document decodes into. A
// document of any other kind is an error.
var kinds = map[string]func() any{
	"v1/Namespace":                                  func() any { return new(corev1.Namespace) },
	"v1/ServiceAccount":                             func() any { return new(corev1.ServiceAccount) },
	"v1/Service":                                    func() any { return new(corev1.Service) },
	"apps/v1/StatefulSet":                           func() any { return new(appsv1.StatefulSet) },
	"policy/v1/PodDisruptionBudget":                 func() any { return new(policyv1.PodDisruptionBudget) },
	"networking.k8s.io/v1/NetworkPolicy":            func() any { return new(networkingv1.NetworkPolicy) },
	"spire.spiffe.io/v1alpha1/ClusterSPIFFEID":      func() any { return new(clusterSPIFFEID) },
	"kustomize.config.k8s.io/v1beta1/Kustomization": func() any { return new(kustomization) },
	"kustomize.config.k8s.io/v1alpha1/Component":    func() any { return new(kustomization) },
}

// examples are manifests that kustomization.yaml deliberately leaves out.
var examples = []string{"agents-clusterspiffeid.yaml"}

// object is one decoded YAML document.
type object struct {
	key string // Kind/name
	obj any
}

// documents splits a YAML file into its documents, as JSON, leaving out
// those that hold only comments.
func documents(file string) ([][]byte, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var docs [][]byte
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		js, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", file, len(docs)+1, err)
		}
		if string(js) != "null" {
			docs = append(docs, js)
		}
	}
}

// typeOf reads a document's apiVersion/kind and Kind/name.
func typeOf(js []byte) (kind, key string, err error) {
	var meta struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(js, &meta); err != nil {
		return "", "", err
	}
	kind = meta.APIVersion + "/" + meta.Kind
	if _, ok := kinds[kind]; !ok {
		return "", "", fmt.Errorf("unexpected kind %q", kind)
	}
	return kind, meta.Kind + "/" + meta.Metadata.Name, nil
}

// decodeStrict decodes a JSON document into the Go type of its kind as the
// API server does with fieldValidation=Strict: unknown fields, fields in
// the wrong case and duplicate fields are errors.
func decodeStrict(js []byte) (key string, obj any, err error) {
	kind, key, err := typeOf(js)
	if err != nil {
		return "", nil, err
	}
	obj = kinds[kind]()
	strict, err := sigsjson.UnmarshalStrict(js, obj)
	if err != nil {
		return "", nil, err
	}
	if err := errors.Join(strict...); err != nil {
		return "", nil, fmt.Errorf("%s: %w", kind, err)
	}
	return key, obj, nil
}

// readDocument decodes one YAML document strictly into its type; YAML with
// a duplicate key is refused too.
func readDocument(doc []byte) (any, error) {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, err
	}
	_, obj, err := decodeStrict(js)
	return obj, err
}

// readFile decodes every document of a YAML file strictly into its type.
func readFile(file string) ([]object, error) {
	docs, err := documents(file)
	if err != nil {
		return nil, err
	}
	objs := make([]object, 0, len(docs))
	for i, js := range docs {
		key, obj, err := decodeStrict(js)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", file, i+1, err)
		}
		objs = append(objs, object{key: key, obj: obj})
	}
	return objs, nil
}

// readPatch decodes every document of a strategic merge patch strictly
// into its type, once its merge directives are checked and set aside.
func readPatch(file string) ([]object, error) {
	docs, err := documents(file)
	if err != nil {
		return nil, err
	}
	objs := make([]object, 0, len(docs))
	for i, js := range docs {
		var doc any
		if err := json.Unmarshal(js, &doc); err != nil {
			return nil, err
		}
		doc, err := withoutDirectives(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", file, i+1, err)
		}
		if js, err = json.Marshal(doc); err != nil {
			return nil, err
		}
		key, obj, err := decodeStrict(js)
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", file, i+1, err)
		}
		objs = append(objs, object{key: key, obj: obj})
	}
	return objs, nil
}

// withoutDirectives returns v less the one merge directive the patches
// use, a list element {$patch: delete, <merge key>: ...} (kustomize and
// strategicpatch remove the element it names); any other directive is an
// error.
func withoutDirectives(v any) (any, error) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if strings.HasPrefix(k, "$") {
				return nil, fmt.Errorf("merge directive %s: %v outside a list element", k, e)
			}
			var err error
			if v[k], err = withoutDirectives(e); err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
		}
	case []any:
		kept := v[:0]
		for _, e := range v {
			if m, ok := e.(map[string]any); ok && m["$patch"] != nil {
				if m["$patch"] != "delete" || len(m) != 2 {
					return nil, fmt.Errorf("list element %v: only {$patch: delete, <merge key>: ...} is supported", m)
				}
				continue
			}
			e, err := withoutDirectives(e)
			if err != nil {
				return nil, err
			}
			kept = append(kept, e)
		}
		return kept, nil
	}
	return v, nil
}

// yamlFiles lists the YAML files under dir, except atfd's own files in
// config directories (checked by atfd's loaders instead).
func yamlFiles(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case d.IsDir() && d.Name() == "config":
			return fs.SkipDir
		case !d.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")):
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestDecodeStrictRefuses shows that the decoding the other tests rely on
// is strict.
func TestDecodeStrictRefuses(t *testing.T) {
	const sts, id = "apiVersion: apps/v1\nkind: StatefulSet\n", "apiVersion: spire.spiffe.io/v1alpha1\nkind: ClusterSPIFFEID\n"
	for _, tc := range []struct {
		name, doc, want string
	}{
		{"unknown field", sts + "spec:\n  replica: 1\n", `unknown field "spec.replica"`},
		{"field in the wrong case", sts + "spec:\n  Replicas: 1\n", `unknown field "spec.Replicas"`},
		{"duplicate field", sts + "spec:\n  replicas: 1\n  replicas: 2\n", `key "replicas" already set in map`},
		{"wrong type", sts + "spec:\n  replicas: one\n", "cannot unmarshal string"},
		{"field the local ClusterSPIFFEID leaves out", id + "spec:\n  ttl: 1h\n", `unknown field "spec.ttl"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := readDocument([]byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("decoded %v, error %v; want an error with %q", objs, err, tc.want)
			}
		})
	}
}

// TestManifestsDecodeStrictly decodes every manifest, patch and
// kustomization in this directory into its type, refusing unknown fields.
func TestManifestsDecodeStrictly(t *testing.T) {
	files := yamlFiles(t, ".")
	if len(files) == 0 {
		t.Fatal("no manifests found")
	}
	patches := map[string]bool{}
	dirs, err := filepath.Glob(filepath.Join("components", "*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range dirs {
		for _, p := range readKustomization(t, filepath.Join(dir, "kustomization.yaml")).Patches {
			patches[filepath.Join(dir, p.Path)] = true
		}
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			read := readFile
			if patches[f] {
				read = readPatch
			}
			objs, err := read(f)
			if err != nil {
				t.Fatal(err)
			}
			if len(objs) == 0 {
				t.Fatal("no documents")
			}
		})
	}
}

// TestKustomization checks that kustomization.yaml lists every manifest
// (but the examples), that the files it and the components name exist, and
// that its image is the one the StatefulSet runs.
func TestKustomization(t *testing.T) {
	k := readKustomization(t, "kustomization.yaml")
	for _, f := range yamlFiles(t, ".") {
		if f == "kustomization.yaml" || strings.HasPrefix(f, "components"+string(filepath.Separator)) || slices.Contains(examples, f) {
			continue
		}
		if !slices.Contains(k.Resources, f) {
			t.Errorf("%s is neither in kustomization.yaml's resources nor an example", f)
		}
	}
	for _, g := range k.ConfigMapGenerator {
		for _, f := range g.Files {
			if _, err := os.Stat(f); err != nil {
				t.Errorf("configMapGenerator %s: %v", g.Name, err)
			}
		}
	}
	components, err := filepath.Glob(filepath.Join("components", "*"))
	if err != nil || len(components) == 0 {
		t.Fatalf("no components: %v", err)
	}
	for _, dir := range components {
		c := readKustomization(t, filepath.Join(dir, "kustomization.yaml"))
		if c.Kind != "Component" || len(c.Patches) == 0 {
			t.Errorf("%s: a %s with %d patches, want a Component with patches", dir, c.Kind, len(c.Patches))
		}
	}
	d := loadBase(t)
	image := d.container(t).Image
	if len(k.Images) != 1 || k.Images[0].Name != image {
		t.Errorf("kustomization.yaml images %+v, want one entry for the StatefulSet's image %q", k.Images, image)
	}
}

// readKustomization reads a Kustomization or Component and checks that the
// files it names exist.
func readKustomization(t *testing.T, file string) *kustomization {
	t.Helper()
	objs, err := readFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 {
		t.Fatalf("%s: %d documents, want one Kustomization or Component", file, len(objs))
	}
	k, ok := objs[0].obj.(*kustomization)
	if !ok {
		t.Fatalf("%s: a %s, want a Kustomization or Component", file, objs[0].key)
	}
	for _, p := range k.Patches {
		if _, err := os.Stat(filepath.Join(filepath.Dir(file), p.Path)); err != nil {
			t.Errorf("%s: patch: %v", file, err)
		}
	}
	for _, r := range k.Resources {
		if _, err := os.Stat(filepath.Join(filepath.Dir(file), r)); err != nil {
			t.Errorf("%s: resource: %v", file, err)
		}
	}
	for _, g := range k.ConfigMapGenerator {
		for _, f := range g.Files {
			if _, err := os.Stat(filepath.Join(filepath.Dir(file), f)); err != nil {
				t.Errorf("%s: configMapGenerator %s: %v", file, g.Name, err)
			}
		}
	}
	return k
}

// deployment is the set of objects kustomization.yaml deploys, by Kind/name,
// and its generated ConfigMap (key -> file).
type deployment struct {
	objs      map[string]any
	configMap string
	keys      map[string]string
}

// loadBase reads what kustomization.yaml deploys.
func loadBase(t *testing.T) deployment {
	t.Helper()
	k := readKustomization(t, "kustomization.yaml")
	d := deployment{objs: map[string]any{}, keys: map[string]string{}}
	for _, f := range k.Resources {
		objs, err := readFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			if _, dup := d.objs[o.key]; dup {
				t.Fatalf("%s: %s defined twice", f, o.key)
			}
			d.objs[o.key] = o.obj
		}
	}
	if len(k.ConfigMapGenerator) != 1 {
		t.Fatalf("kustomization.yaml: %d ConfigMap generators, want 1 (atfd's configuration)", len(k.ConfigMapGenerator))
	}
	g := k.ConfigMapGenerator[0]
	d.configMap = g.Name
	for _, f := range g.Files {
		d.keys[path.Base(f)] = f
	}
	ns := get[corev1.Namespace](t, d, "Namespace")
	if g.Namespace != ns.Name {
		t.Errorf("configMapGenerator %s: namespace %q, want %q", g.Name, g.Namespace, ns.Name)
	}
	return d
}

// get returns the one object of kind, or the object kind/name.
func get[T any](t *testing.T, d deployment, kind string) *T {
	t.Helper()
	var found []*T
	for key, o := range d.objs {
		if key == kind || strings.HasPrefix(key, kind+"/") {
			if obj, ok := o.(*T); ok {
				found = append(found, obj)
			}
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d objects of kind %s, want 1", len(found), kind)
	}
	return found[0]
}

func (d deployment) container(t *testing.T) corev1.Container {
	t.Helper()
	sts := get[appsv1.StatefulSet](t, d, "StatefulSet")
	cs := sts.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("StatefulSet %s: %d containers, want 1", sts.Name, len(cs))
	}
	return cs[0]
}

// patched applies components, in order, to a copy of d as kustomize
// does: their resources are added, their ConfigMap generators merged into
// atfd's, their strategic merge patches applied; every patched object is
// decoded strictly again.
func (d deployment) patched(t *testing.T, components ...string) deployment {
	t.Helper()
	out := deployment{objs: maps.Clone(d.objs), configMap: d.configMap, keys: maps.Clone(d.keys)}
	ns := get[corev1.Namespace](t, d, "Namespace")
	for _, component := range components {
		dir := filepath.Join("components", component)
		c := readKustomization(t, filepath.Join(dir, "kustomization.yaml"))
		for _, r := range c.Resources {
			objs, err := readFile(filepath.Join(dir, r))
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range objs {
				if _, dup := out.objs[o.key]; dup {
					t.Fatalf("%s: %s is already deployed", filepath.Join(dir, r), o.key)
				}
				out.objs[o.key] = o.obj
			}
		}
		// A component replaces files of atfd's ConfigMap; another
		// ConfigMap would not be mounted.
		for _, g := range c.ConfigMapGenerator {
			if g.Name != out.configMap || g.Namespace != ns.Name || g.Behavior != "merge" {
				t.Fatalf("%s: configMapGenerator %s/%s, behavior %q: want behavior merge into %s/%s", dir, g.Namespace, g.Name, g.Behavior, ns.Name, out.configMap)
			}
			for _, f := range g.Files {
				out.keys[path.Base(f)] = filepath.Join(dir, f)
			}
		}
		for _, p := range c.Patches {
			out.applyPatch(t, filepath.Join(dir, p.Path))
		}
	}
	return out
}

// applyPatch applies the strategic merge patches of file to d's objects,
// as kustomize does, and decodes the results strictly again.
func (d deployment) applyPatch(t *testing.T, file string) {
	t.Helper()
	patches, err := documents(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, patch := range patches {
		_, key, err := typeOf(patch)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		target, ok := d.objs[key]
		if !ok {
			t.Fatalf("%s: patches %s, which kustomization.yaml does not deploy", file, key)
		}
		orig, err := json.Marshal(target)
		if err != nil {
			t.Fatal(err)
		}
		merged, err := strategicpatch.StrategicMergePatch(orig, patch, target)
		if err != nil {
			t.Fatalf("%s: %s: %v", file, key, err)
		}
		if _, d.objs[key], err = decodeStrict(merged); err != nil {
			t.Fatalf("%s: %s after the patch: %v", file, key, err)
		}
	}
}

// TestDeployment checks the manifests against atfd's configuration, read
// and validated by atfd's own loader, as deployed, with each component, and
// with the etcd mode and the hostPath socket together.
func TestDeployment(t *testing.T) {
	type variant struct {
		components []string // none: kustomization.yaml as it is
		check      func(*testing.T, deployment, config.Config)
	}
	variants := []variant{
		{nil, checkCSISocket},
		{[]string{"hostpath-socket"}, checkHostPathSocket},
		{[]string{"grpc-tls-probe"}, func(t *testing.T, d deployment, _ config.Config) {
			if p := d.container(t).ReadinessProbe; p.GRPC == nil {
				t.Errorf("readiness probe %+v, want gRPC health", p.ProbeHandler)
			}
		}},
		{[]string{"etcd"}, func(t *testing.T, d deployment, cfg config.Config) {
			checkCSISocket(t, d, cfg)
			checkEtcdConfig(t, cfg)
		}},
		{[]string{"etcd", "hostpath-socket"}, checkHostPathSocket},
		{[]string{"oauth"}, func(t *testing.T, d deployment, cfg config.Config) {
			checkCSISocket(t, d, cfg)
			checkOAuthConfig(t, cfg)
		}},
		{[]string{"oauth", "hostpath-socket", "grpc-tls-probe"}, checkHostPathSocket},
	}
	dirs, err := filepath.Glob(filepath.Join("components", "*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range dirs {
		if !slices.ContainsFunc(variants, func(v variant) bool { return slices.Contains(v.components, filepath.Base(dir)) }) {
			t.Errorf("%s: no check for this component here", dir)
		}
	}
	base := loadBase(t)
	for _, v := range variants {
		name := strings.Join(v.components, "+")
		if name == "" {
			name = "base"
		}
		t.Run(name, func(t *testing.T) {
			d := base.patched(t, v.components...)
			cfg := d.config(t)
			checkDeployment(t, d, cfg)
			v.check(t, d, cfg)
		})
	}
}

// enforce is the namespace label of the Pod Security level it enforces.
const enforce = "pod-security.kubernetes.io/enforce"

// checkCSISocket checks that the Workload API comes from the SPIFFE CSI
// driver, which Pod Security "restricted" allows.
func checkCSISocket(t *testing.T, d deployment, cfg config.Config) {
	if v := socketVolume(t, d, cfg); v.CSI == nil || v.CSI.Driver != "csi.spiffe.io" || v.CSI.ReadOnly == nil || !*v.CSI.ReadOnly {
		t.Errorf("Workload API volume %+v, want a read-only csi.spiffe.io volume", v.VolumeSource)
	}
	if ns := get[corev1.Namespace](t, d, "Namespace"); ns.Labels[enforce] != "restricted" {
		t.Errorf("namespace %s enforces %q, want Pod Security restricted", ns.Name, ns.Labels[enforce])
	}
}

// checkHostPathSocket checks that the Workload API comes from a hostPath,
// in a namespace that allows one.
func checkHostPathSocket(t *testing.T, d deployment, cfg config.Config) {
	if v := socketVolume(t, d, cfg); v.CSI != nil || v.HostPath == nil {
		t.Errorf("Workload API volume %+v, want a hostPath and no CSI", v.VolumeSource)
	}
	if ns := get[corev1.Namespace](t, d, "Namespace"); ns.Labels[enforce] != "privileged" {
		t.Errorf("namespace %s enforces %q, but a hostPath volume needs privileged", ns.Name, ns.Labels[enforce])
	}
}

// config reads atfd's configuration, the roles file and the policy from the
// files the generated ConfigMap holds, with atfd's loaders, and checks that
// the model and policy are deploy/policy's.
func (d deployment) config(t *testing.T) config.Config {
	t.Helper()
	c := d.container(t)
	if len(c.Command) < 2 || c.Command[len(c.Command)-2] != "-config" {
		t.Fatalf("atfd's command %q, want it to end with -config FILE", c.Command)
	}
	cfgPath := c.Command[len(c.Command)-1]
	file := d.configMapFile(t, cfgPath)
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	// One file for every pod: a replica name in it would make them one
	// replica. Unset, each takes its host name, its pod's name (Validate
	// fills it in, so look before).
	if e := cfg.Store.Etcd; e != nil && e.Replica != "" {
		t.Errorf("%s: store.etcd.replica %q in a file every replica reads: leave it unset (the pod's name)", file, e.Replica)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := config.LoadRoles(d.configMapFile(t, cfg.RolesFile)); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct{ path, want, of string }{
		{cfg.Policy.ModelFile, policy.Model, "deploy/policy/model.conf"},
		{cfg.Policy.PolicyFile, policy.Example, "deploy/policy/policy.csv"},
	} {
		got, err := os.ReadFile(d.configMapFile(t, f.path))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != f.want {
			t.Errorf("%s differs from %s: copy it again", d.keys[path.Base(f.path)], f.of)
		}
	}
	return cfg
}

// configMapFile returns the file in this directory that atfd reads at p:
// p must be a key of the generated ConfigMap, in the directory it is
// mounted at.
func (d deployment) configMapFile(t *testing.T, p string) string {
	t.Helper()
	c := d.container(t)
	m, v := mountAt(t, d, path.Dir(p))
	if v.ConfigMap == nil || v.ConfigMap.Name != d.configMap {
		t.Fatalf("%s: %s is not the %s ConfigMap", p, m.MountPath, d.configMap)
	}
	if !m.ReadOnly {
		t.Errorf("container %s mounts the configuration read-write", c.Name)
	}
	file, ok := d.keys[path.Base(p)]
	if !ok {
		t.Fatalf("%s: no key %s in the %s ConfigMap", p, path.Base(p), d.configMap)
	}
	return file
}

// mountAt returns the container's mount at dir and the volume mounted
// there.
func mountAt(t *testing.T, d deployment, dir string) (corev1.VolumeMount, corev1.Volume) {
	t.Helper()
	c := d.container(t)
	for _, m := range c.VolumeMounts {
		if path.Clean(m.MountPath) != dir {
			continue
		}
		sts := get[appsv1.StatefulSet](t, d, "StatefulSet")
		for _, v := range sts.Spec.Template.Spec.Volumes {
			if v.Name == m.Name {
				return m, v
			}
		}
		for _, pvc := range sts.Spec.VolumeClaimTemplates {
			if pvc.Name == m.Name {
				return m, corev1.Volume{Name: m.Name, VolumeSource: corev1.VolumeSource{
					PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: pvc.Name},
				}}
			}
		}
		t.Fatalf("mount %s: no volume or volume claim template %s", dir, m.Name)
	}
	t.Fatalf("container %s mounts nothing at %s", c.Name, dir)
	return corev1.VolumeMount{}, corev1.Volume{}
}

// socketDir returns the directory of the Workload API socket.
func socketDir(t *testing.T, cfg config.Config) string {
	t.Helper()
	u, err := url.Parse(cfg.SPIFFE.WorkloadAPIAddr)
	if err != nil || u.Scheme != "unix" || u.Path == "" {
		t.Fatalf("spiffe.workload_api_addr %q, want unix:///PATH", cfg.SPIFFE.WorkloadAPIAddr)
	}
	return path.Dir(u.Path)
}

// socketVolume returns the volume the Workload API socket is in.
func socketVolume(t *testing.T, d deployment, cfg config.Config) corev1.Volume {
	t.Helper()
	_, v := mountAt(t, d, socketDir(t, cfg))
	return v
}

// hostPort splits a listen address whose host must be reachable from other
// pods.
func hostPort(t *testing.T, key, addr string) int32 {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		t.Errorf("%s %q: loopback, unreachable from the Service and the kubelet", key, addr)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		t.Fatalf("%s %q: want a fixed port", key, addr)
	}
	return int32(n)
}

// containerPort resolves a port by number or name against the container's
// ports; 0 if it is not one of them.
func containerPort(c corev1.Container, p intstr.IntOrString) int32 {
	for _, cp := range c.Ports {
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return cp.ContainerPort
		}
	}
	return 0
}

// checkProbe checks that a probe can work against atfd: one handler, on
// one of its ports, with what that port speaks.
func checkProbe(c corev1.Container, p *corev1.Probe, grpcPort, metricsPort int32) error {
	if p == nil {
		return errors.New("missing")
	}
	h := p.ProbeHandler
	n := 0
	for _, set := range []bool{h.Exec != nil, h.HTTPGet != nil, h.TCPSocket != nil, h.GRPC != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("%d handlers, want 1", n)
	}
	switch {
	case h.Exec != nil:
		return errors.New("exec: the image has no shell and no probe binary")
	case h.TCPSocket != nil:
		if port := containerPort(c, h.TCPSocket.Port); port != grpcPort && port != metricsPort {
			return fmt.Errorf("tcpSocket %s: not atfd's gRPC (%d) or metrics (%d) port", h.TCPSocket.Port.String(), grpcPort, metricsPort)
		}
	case h.HTTPGet != nil:
		if port := containerPort(c, h.HTTPGet.Port); port != metricsPort || (h.HTTPGet.Path != "/metrics" && h.HTTPGet.Path != readyPath) || (h.HTTPGet.Scheme != "" && h.HTTPGet.Scheme != corev1.URISchemeHTTP) {
			return fmt.Errorf("httpGet %s %s:%s: only the metrics port (%d) serves HTTP, plain, on /metrics and %s", h.HTTPGet.Scheme, h.HTTPGet.Port.String(), h.HTTPGet.Path, metricsPort, readyPath)
		}
	case h.GRPC != nil:
		if h.GRPC.Port != grpcPort {
			return fmt.Errorf("grpc port %d: the health service is on the gRPC port %d", h.GRPC.Port, grpcPort)
		}
		// Without mode TLS the kubelet dials plaintext, and this port
		// speaks only TLS.
		if h.GRPC.Mode == nil || *h.GRPC.Mode != corev1.GRPCProbeModeTLS {
			return errors.New("grpc without mode TLS: atfd's gRPC port speaks only TLS")
		}
	}
	return nil
}

// val is *p, or "unset" for nil, for messages.
func val[T any](p *T) any {
	if p == nil {
		return "unset"
	}
	return *p
}

// selects reports whether sel selects the set of labels.
func selects(t *testing.T, sel *metav1.LabelSelector, set map[string]string) bool {
	t.Helper()
	if sel == nil {
		return false
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatal(err)
	}
	return !s.Empty() && s.Matches(labels.Set(set))
}

// checkDeployment checks one variant of the deployment against atfd's
// configuration: what every variant holds, then its store's mode.
func checkDeployment(t *testing.T, d deployment, cfg config.Config) {
	checkObjects(t, d)
	ports := checkPorts(t, d, cfg)
	checkSecurity(t, d)
	checkService(t, d, ports)
	checkIngress(t, d, ports)
	checkSPIFFEID(t, d)
	if m, _ := mountAt(t, d, socketDir(t, cfg)); !m.ReadOnly {
		t.Errorf("the Workload API socket's directory %s is mounted read-write", m.MountPath)
	}
	env := map[string]string{}
	for _, e := range d.container(t).Env {
		env[e.Name] = e.Value
	}
	if got := env["SPIFFE_ENDPOINT_SOCKET"]; got != cfg.SPIFFE.WorkloadAPIAddr {
		t.Errorf("SPIFFE_ENDPOINT_SOCKET %q (atfctl in the container), want spiffe.workload_api_addr %q", got, cfg.SPIFFE.WorkloadAPIAddr)
	}
	if cfg.Store.Etcd == nil {
		checkBolt(t, d, cfg)
	} else {
		checkEtcd(t, d, cfg)
	}
}

// checkObjects checks that the namespaced objects are in atfd's namespace
// and that the StatefulSet's and the PodDisruptionBudget's selectors
// select its pods, which run as its service account.
func checkObjects(t *testing.T, d deployment) {
	ns := get[corev1.Namespace](t, d, "Namespace")
	sa := get[corev1.ServiceAccount](t, d, "ServiceAccount")
	svc := get[corev1.Service](t, d, "Service")
	sts := get[appsv1.StatefulSet](t, d, "StatefulSet")
	pdb := get[policyv1.PodDisruptionBudget](t, d, "PodDisruptionBudget")
	metas := []metav1.ObjectMeta{sa.ObjectMeta, svc.ObjectMeta, sts.ObjectMeta, pdb.ObjectMeta}
	for _, np := range networkPolicies(t, d) {
		metas = append(metas, np.ObjectMeta)
	}
	for _, m := range metas {
		if m.Namespace != ns.Name {
			t.Errorf("%s is in namespace %q, want %q", m.Name, m.Namespace, ns.Name)
		}
	}
	pod := sts.Spec.Template
	if !selects(t, sts.Spec.Selector, pod.Labels) {
		t.Errorf("StatefulSet selector %v does not select its pods %v", sts.Spec.Selector, pod.Labels)
	}
	if pod.Spec.ServiceAccountName != sa.Name {
		t.Errorf("pod runs as service account %q, want %q", pod.Spec.ServiceAccountName, sa.Name)
	}
	for _, m := range d.container(t).VolumeMounts {
		if !slices.ContainsFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name }) &&
			!slices.ContainsFunc(sts.Spec.VolumeClaimTemplates, func(c corev1.PersistentVolumeClaim) bool { return c.Name == m.Name }) {
			t.Errorf("mount %s: no volume or volume claim template %s", m.MountPath, m.Name)
		}
	}
	if !selects(t, pdb.Spec.Selector, pod.Labels) {
		t.Errorf("PodDisruptionBudget selector %v does not select atfd's pods", pdb.Spec.Selector)
	}
}

// checkPorts checks the container's ports against the configuration's
// (reachable, named) and its probes against what each port speaks, and
// returns the gRPC and metrics ports.
func checkPorts(t *testing.T, d deployment, cfg config.Config) []int32 {
	c := d.container(t)
	grpcPort := hostPort(t, "listen_addr", cfg.ListenAddr)
	if cfg.MetricsAddr == "" {
		t.Fatal("metrics_addr is off: liveness needs it")
	}
	metricsPort := hostPort(t, "metrics_addr", cfg.MetricsAddr)
	want := map[string]int32{"grpc": grpcPort, "metrics": metricsPort}
	// The OAuth listener, when on, has a port of its own; a port without
	// the listener would be dead.
	if cfg.OAuth.ListenAddr != "" {
		want["oauth"] = hostPort(t, "oauth.listen_addr", cfg.OAuth.ListenAddr)
	} else if p := containerPort(c, intstr.FromString("oauth")); p != 0 {
		t.Errorf("container port oauth (%d), but oauth.listen_addr is off", p)
	}
	ports := make([]int32, 0, len(want))
	for name, port := range want {
		if got := containerPort(c, intstr.FromString(name)); got != port {
			t.Errorf("container port %q is %d, want %d from the configuration", name, got, port)
		}
		ports = append(ports, port)
	}
	for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if err := checkProbe(c, p, grpcPort, metricsPort); err != nil {
			t.Errorf("%s probe: %v", name, err)
		}
	}
	slices.Sort(ports)
	return ports
}

// checkSecurity checks the pod's and the container's security context
// (what Pod Security "restricted" asks, and a read-only root filesystem)
// and the container's resources.
func checkSecurity(t *testing.T, d deployment) {
	ps, cs := get[appsv1.StatefulSet](t, d, "StatefulSet").Spec.Template.Spec.SecurityContext, d.container(t).SecurityContext
	switch {
	case ps == nil || cs == nil:
		t.Fatal("pod or container without a security context")
	case ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || ps.RunAsUser == nil || *ps.RunAsUser == 0:
		t.Error("the pod must run as a numeric non-root user (the image's user is a name)")
	case ps.SeccompProfile == nil || ps.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Error("the pod's seccomp profile must be RuntimeDefault")
	case cs.AllowPrivilegeEscalation == nil || *cs.AllowPrivilegeEscalation:
		t.Error("the container must not allow privilege escalation")
	case cs.ReadOnlyRootFilesystem == nil || !*cs.ReadOnlyRootFilesystem:
		t.Error("the container's root filesystem must be read-only")
	case cs.Capabilities == nil || !slices.Equal(cs.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(cs.Capabilities.Add) != 0:
		t.Error("the container must drop ALL capabilities and add none")
	}
	c := d.container(t)
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := c.Resources.Requests[r]; !ok {
			t.Errorf("no %s request", r)
		}
		if _, ok := c.Resources.Limits[r]; !ok {
			t.Errorf("no %s limit", r)
		}
	}
}

// checkService checks that the Service serves atfd's two ports, by name,
// on the same numbers.
func checkService(t *testing.T, d deployment, ports []int32) {
	svc := get[corev1.Service](t, d, "Service")
	pod := get[appsv1.StatefulSet](t, d, "StatefulSet").Spec.Template
	c := d.container(t)
	if !selects(t, &metav1.LabelSelector{MatchLabels: svc.Spec.Selector}, pod.Labels) {
		t.Errorf("Service selector %v does not select atfd's pods %v", svc.Spec.Selector, pod.Labels)
	}
	var served []int32
	for _, p := range svc.Spec.Ports {
		port := containerPort(c, p.TargetPort)
		if port == 0 || port != p.Port {
			t.Errorf("Service port %s: %d -> %s, want a container port of the same number", p.Name, p.Port, p.TargetPort.String())
		}
		served = append(served, port)
	}
	slices.Sort(served)
	if !slices.Equal(served, ports) {
		t.Errorf("Service serves ports %v, want %v", served, ports)
	}
}

// networkPolicies returns the NetworkPolicies that select atfd's pods;
// at least one must.
func networkPolicies(t *testing.T, d deployment) []*networkingv1.NetworkPolicy {
	t.Helper()
	pod := get[appsv1.StatefulSet](t, d, "StatefulSet").Spec.Template
	var nps []*networkingv1.NetworkPolicy
	for key, o := range d.objs {
		np, ok := o.(*networkingv1.NetworkPolicy)
		if !ok {
			continue
		}
		if !selects(t, &np.Spec.PodSelector, pod.Labels) {
			t.Errorf("%s: selector %v does not select atfd's pods", key, np.Spec.PodSelector)
		}
		nps = append(nps, np)
	}
	if len(nps) == 0 {
		t.Fatal("no NetworkPolicy selects atfd's pods")
	}
	return nps
}

// checkIngress checks that the NetworkPolicies admit traffic to both of
// atfd's ports.
func checkIngress(t *testing.T, d deployment, ports []int32) {
	c := d.container(t)
	var open []int32
	for _, np := range networkPolicies(t, d) {
		for _, rule := range np.Spec.Ingress {
			for _, p := range rule.Ports {
				if p.Port != nil {
					open = append(open, containerPort(c, *p.Port))
				}
			}
		}
	}
	for _, want := range ports {
		if !slices.Contains(open, want) {
			t.Errorf("NetworkPolicy admits no traffic to port %d", want)
		}
	}
}

// checkSPIFFEID checks atfd's ClusterSPIFFEID: the default broker ID
// (broker/client: spiffe://<trust domain>/atfd), for atfd's container only.
func checkSPIFFEID(t *testing.T, d deployment) {
	ns := get[corev1.Namespace](t, d, "Namespace")
	sa := get[corev1.ServiceAccount](t, d, "ServiceAccount")
	id := get[clusterSPIFFEID](t, d, "ClusterSPIFFEID")
	pod := get[appsv1.StatefulSet](t, d, "StatefulSet").Spec.Template
	if id.Spec.SPIFFEIDTemplate != "spiffe://{{ .TrustDomain }}/atfd" {
		t.Errorf("ClusterSPIFFEID %s: template %q, want the default broker ID", id.Name, id.Spec.SPIFFEIDTemplate)
	}
	if id.Namespace != "" {
		t.Errorf("ClusterSPIFFEID %s: cluster-scoped, but has namespace %q", id.Name, id.Namespace)
	}
	nsLabels := map[string]string{"kubernetes.io/metadata.name": ns.Name} // set by the API server
	for k, v := range ns.Labels {
		nsLabels[k] = v
	}
	if !selects(t, id.Spec.NamespaceSelector, nsLabels) || !selects(t, id.Spec.PodSelector, pod.Labels) {
		t.Errorf("ClusterSPIFFEID %s does not select atfd's namespace and pods", id.Name)
	}
	for _, sel := range []string{"k8s:sa:" + sa.Name, "k8s:container-name:" + d.container(t).Name} {
		if !slices.Contains(id.Spec.WorkloadSelectorTemplates, sel) {
			t.Errorf("ClusterSPIFFEID %s: no workload selector %s", id.Name, sel)
		}
	}
}

// checkBolt checks the default mode: one replica on a bbolt file, which
// has one writer, on a writable volume claim, and no voluntary eviction of
// that replica.
func checkBolt(t *testing.T, d deployment, cfg config.Config) {
	sts := get[appsv1.StatefulSet](t, d, "StatefulSet")
	if sts.Spec.Replicas == nil || *sts.Spec.Replicas != 1 {
		t.Errorf("StatefulSet replicas %v, want exactly 1: a bbolt file has one writer", val(sts.Spec.Replicas))
	}
	m, v := mountAt(t, d, path.Dir(cfg.StorePath))
	if v.PersistentVolumeClaim == nil || m.ReadOnly {
		t.Errorf("store_path %s: not on a writable volume claim template", cfg.StorePath)
	}
	if n := disruptions(t, d, 1); n != 0 {
		t.Errorf("PodDisruptionBudget allows %d voluntary disruptions of the one replica, want 0", n)
	}
}

// disruptions is how many of replicas ready pods the PodDisruptionBudget
// lets voluntary disruptions take at once.
func disruptions(t *testing.T, d deployment, replicas int) int {
	t.Helper()
	pdb := get[policyv1.PodDisruptionBudget](t, d, "PodDisruptionBudget")
	mu, ma := pdb.Spec.MaxUnavailable, pdb.Spec.MinAvailable
	if (mu == nil) == (ma == nil) {
		t.Fatalf("PodDisruptionBudget: maxUnavailable %v, minAvailable %v: want exactly one", mu, ma)
	}
	if mu != nil {
		n, err := intstr.GetScaledValueFromIntOrPercent(mu, replicas, true)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	n, err := intstr.GetScaledValueFromIntOrPercent(ma, replicas, true)
	if err != nil {
		t.Fatal(err)
	}
	return max(replicas-n, 0)
}

// checkOAuthConfig checks that the OAuth component's configuration turns
// the endpoints on and is otherwise config/atfd.yaml.
func checkOAuthConfig(t *testing.T, cfg config.Config) {
	if cfg.OAuth.ListenAddr == "" || !strings.HasPrefix(cfg.OAuth.Issuer, "https://") {
		t.Fatalf("the oauth component's configuration: oauth %+v, want the listener on and an https issuer", cfg.OAuth)
	}
	if _, port, _ := net.SplitHostPort(cfg.OAuth.ListenAddr); !strings.HasSuffix(cfg.OAuth.Issuer, ":"+port) {
		t.Errorf("oauth.issuer %s is not on the listener's port %s (the Service's)", cfg.OAuth.Issuer, port)
	}
	base := loadBase(t).config(t)
	same := cfg
	same.OAuth = base.OAuth
	if !reflect.DeepEqual(same, base) {
		t.Errorf("the oauth component's configuration differs from config/atfd.yaml in more than oauth:\n%+v\n%+v", same, base)
	}
}
