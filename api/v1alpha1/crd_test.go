package v1alpha1_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	crdvalidation "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	structuraldefaulting "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"
)

const crdDir = "../../charts/sigil/crds"

// crdSchema loads a generated CRD, checks it the way the API server does on
// creation (schema structure, CEL compilation and cost), and returns its
// internal and structural schemas.
func crdSchema(t *testing.T, file string) (*apiextensions.JSONSchemaProps, *structuralschema.Structural) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(crdDir, file))
	if err != nil {
		t.Fatal(err)
	}
	var v1crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(raw, &v1crd); err != nil {
		t.Fatal(err)
	}
	v1crd.Status.StoredVersions = []string{v1crd.Spec.Versions[0].Name}
	var crd apiextensions.CustomResourceDefinition
	if err := apiextensionsv1.Convert_v1_CustomResourceDefinition_To_apiextensions_CustomResourceDefinition(&v1crd, &crd, nil); err != nil {
		t.Fatal(err)
	}
	if errs := crdvalidation.ValidateCustomResourceDefinition(context.Background(), &crd); len(errs) > 0 {
		t.Fatalf("%s: the API server would refuse this CRD: %v", file, errs.ToAggregate())
	}
	// Conversion hoists a schema shared by all versions to spec.validation.
	props := crd.Spec.Validation.OpenAPIV3Schema
	st, err := structuralschema.NewStructural(props)
	if err != nil {
		t.Fatal(err)
	}
	return props, st
}

// admit runs defaulting, OpenAPI and CEL validation over obj as the API
// server does for a create.
func admit(t *testing.T, props *apiextensions.JSONSchemaProps, st *structuralschema.Structural, obj map[string]any) field.ErrorList {
	t.Helper()
	structuraldefaulting.Default(obj, st)
	sv, _, err := apiservervalidation.NewSchemaValidator(props)
	if err != nil {
		t.Fatal(err)
	}
	errs := apiservervalidation.ValidateCustomResource(nil, obj, sv)
	if len(errs) > 0 {
		return errs
	}
	v := cel.NewValidator(st, true, celconfig.PerCallLimit)
	celErrs, _ := v.Validate(context.Background(), nil, st, obj, nil, celconfig.RuntimeCELCostBudget)
	return celErrs
}

func policyObj(t *testing.T, spec string) map[string]any {
	t.Helper()
	return decode(t, "apiVersion: sigil.io/v1alpha1\nkind: SigilNetworkPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n"+spec)
}

// decode parses YAML as the API server does: integers stay int64.
func decode(t *testing.T, doc string) map[string]any {
	t.Helper()
	js, err := yaml.YAMLToJSON([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := utiljson.Unmarshal(js, &obj); err != nil {
		t.Fatal(err)
	}
	return obj
}

func TestPolicyCRDValidation(t *testing.T) {
	props, st := crdSchema(t, "sigil.io_sigilnetworkpolicies.yaml")
	crdSchema(t, "sigil.io_sigilclusterwidenetworkpolicies.yaml")
	cases := []struct {
		name, spec string
		wantErr    string // "" means accepted
	}{
		{"minimal", "  endpointSelector: {}\n", ""},
		{"deny-only rule", "  endpointSelector: {}\n  ingress: [{}]\n", ""},
		{"full", `  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{endpoints: {matchLabels: {app: fe}}, namespaceSelector: {}}, {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}, {entity: world}]
    toPorts: [{port: 80, endPort: 90, protocol: TCP}, {port: http}]
    icmps: [{type: 8}, {type: 3, code: 4}]
  egressDeny:
  - to: [{entity: all}]
`, ""},
		{"two peer kinds", "  endpointSelector: {}\n  ingress: [{from: [{entity: world, cidr: 10.0.0.0/8}]}]\n", "exactly one of endpoints, cidr or entity"},
		{"no peer kind", "  endpointSelector: {}\n  ingress: [{from: [{}]}]\n", "exactly one of endpoints, cidr or entity"},
		{"bad entity", "  endpointSelector: {}\n  egress: [{to: [{entity: moon}]}]\n", "Unsupported value"},
		{"bad cidr", "  endpointSelector: {}\n  egress: [{to: [{cidr: 10.0.0.0/33}]}]\n", "cidr must be a prefix"},
		{"except outside", "  endpointSelector: {}\n  egress: [{to: [{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}]}]\n", "must lie inside cidr"},
		{"except without cidr", "  endpointSelector: {}\n  egress: [{to: [{entity: world, except: [10.0.0.0/16]}]}]\n", "except is only allowed"},
		{"ns selector alone", "  endpointSelector: {}\n  egress: [{to: [{namespaceSelector: {}}]}]\n", "namespaceSelector is only allowed"},
		{"endPort below port", "  endpointSelector: {}\n  egress: [{to: [{entity: all}], toPorts: [{port: 90, endPort: 80}]}]\n", "endPort must not be below port"},
		{"endPort named", "  endpointSelector: {}\n  egress: [{to: [{entity: all}], toPorts: [{port: http, endPort: 80}]}]\n", "endPort needs a numeric port"},
		{"port zero", "  endpointSelector: {}\n  egress: [{to: [{entity: all}], toPorts: [{port: 0}]}]\n", "between 1 and 65535"},
		{"bad protocol", "  endpointSelector: {}\n  egress: [{to: [{entity: all}], toPorts: [{port: 80, protocol: ICMP}]}]\n", "Unsupported value"},
		{"ports without peers", "  endpointSelector: {}\n  egress: [{toPorts: [{port: 80}]}]\n", "needs to peers"},
		{"icmp type range", "  endpointSelector: {}\n  egress: [{to: [{entity: all}], icmps: [{type: 300}]}]\n", "less than or equal to 255"},
		{"no selector", "  ingress: [{}]\n", "endpointSelector"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			errs := admit(t, props, st, policyObj(t, c.spec))
			msg := errs.ToAggregate()
			switch {
			case c.wantErr == "" && len(errs) > 0:
				t.Fatalf("refused: %v", msg)
			case c.wantErr != "" && len(errs) == 0:
				t.Fatalf("accepted, want error %q", c.wantErr)
			case c.wantErr != "" && !strings.Contains(msg.Error(), c.wantErr):
				t.Fatalf("error %q does not mention %q", msg, c.wantErr)
			}
		})
	}
}

func TestIdentityCRDValidation(t *testing.T) {
	props, st := crdSchema(t, "sigil.io_sigilidentities.yaml")
	for _, c := range []struct {
		doc     string
		wantErr string
	}{
		{"metadata: {name: \"300\"}\nspec: {id: 300, securityLabels: {\"k8s:app\": web}}", ""},
		{"metadata: {name: \"301\"}\nspec: {id: 300, securityLabels: {\"k8s:app\": web}}", "decimal form of spec.id"},
		{"metadata: {name: \"7\"}\nspec: {id: 7, securityLabels: {\"k8s:app\": web}}", "greater than or equal to 256"},
	} {
		obj := decode(t, "apiVersion: sigil.io/v1alpha1\nkind: SigilIdentity\n"+c.doc)
		errs := admit(t, props, st, obj)
		if (c.wantErr == "") != (len(errs) == 0) || (c.wantErr != "" && !strings.Contains(errs.ToAggregate().Error(), c.wantErr)) {
			t.Errorf("%s: got %v, want %q", c.doc, errs.ToAggregate(), c.wantErr)
		}
	}
}
