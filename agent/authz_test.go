package agent

import (
	"net/netip"
	"testing"

	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
)

const root = "istio-system"

func policy(ns, name string, action securityv1beta1.AuthorizationPolicy_Action, selector map[string]string, rules ...*securityv1beta1.Rule) Policy {
	spec := &securityv1beta1.AuthorizationPolicy{Action: action, Rules: rules}
	if selector != nil {
		spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: selector}
	}
	return Policy{Namespace: ns, Name: name, Spec: spec}
}

func fromPrincipals(p ...string) *securityv1beta1.Rule {
	return &securityv1beta1.Rule{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{Principals: p}}}}
}

func TestAuthorize(t *testing.T) {
	dst := Workload{Namespace: "shop", Labels: map[string]string{"app": "cart"}}
	client := Request{
		SourcePrincipal: "cluster.local/ns/shop/sa/frontend", SourceNamespace: "shop",
		SourceIP: netip.MustParseAddr("198.19.1.2"), DestinationIP: netip.MustParseAddr("198.19.2.2"), DestinationPort: 8080,
	}
	plaintext := client
	plaintext.SourcePrincipal, plaintext.SourceNamespace = "", ""

	allow, deny := securityv1beta1.AuthorizationPolicy_ALLOW, securityv1beta1.AuthorizationPolicy_DENY
	tests := []struct {
		name     string
		policies []Policy
		req      Request
		allowed  bool
	}{
		{"no policies allow", nil, client, true},
		{"allow matching principal", []Policy{policy("shop", "p", allow, nil, fromPrincipals("cluster.local/ns/shop/sa/frontend"))}, client, true},
		{"allow other principal denies", []Policy{policy("shop", "p", allow, nil, fromPrincipals("cluster.local/ns/shop/sa/admin"))}, client, false},
		{"allow with empty rules denies", []Policy{policy("shop", "p", allow, nil)}, client, false},
		{"allow with empty rule allows", []Policy{policy("shop", "p", allow, nil, &securityv1beta1.Rule{})}, client, true},
		{"deny matching principal", []Policy{policy("shop", "p", deny, nil, fromPrincipals("*"))}, client, false},
		{"deny wins over allow", []Policy{
			policy("shop", "a", allow, nil, &securityv1beta1.Rule{}),
			policy("shop", "d", deny, nil, fromPrincipals("cluster.local/ns/shop/*")),
		}, client, false},
		{"prefix principal", []Policy{policy("shop", "p", allow, nil, fromPrincipals("cluster.local/ns/shop/*"))}, client, true},
		{"plaintext has no principal", []Policy{policy("shop", "p", allow, nil, fromPrincipals("*"))}, plaintext, false},
		{"deny plaintext by notPrincipals", []Policy{policy("shop", "p", deny, nil, &securityv1beta1.Rule{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{NotPrincipals: []string{"*"}}}}})}, plaintext, false},
		{"notPrincipals spares mTLS", []Policy{policy("shop", "p", deny, nil, &securityv1beta1.Rule{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{NotPrincipals: []string{"*"}}}}})}, client, true},
		{"selector not matching ignored", []Policy{policy("shop", "p", allow, map[string]string{"app": "db"})}, client, true},
		{"selector matching applies", []Policy{policy("shop", "p", allow, map[string]string{"app": "cart"})}, client, false},
		{"other namespace ignored", []Policy{policy("billing", "p", deny, nil, &securityv1beta1.Rule{})}, client, true},
		{"root namespace applies", []Policy{policy(root, "p", deny, nil, &securityv1beta1.Rule{})}, client, false},
		{"namespaces match", []Policy{policy("shop", "p", allow, nil, &securityv1beta1.Rule{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{Namespaces: []string{"shop"}}}}})}, client, true},
		{"ipBlocks match", []Policy{policy("shop", "p", allow, nil, &securityv1beta1.Rule{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{IpBlocks: []string{"198.19.1.0/24"}}}}})}, client, true},
		{"notIpBlocks exclude", []Policy{policy("shop", "p", allow, nil, &securityv1beta1.Rule{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{NotIpBlocks: []string{"198.19.1.2"}}}}})}, client, false},
		{"ports match", []Policy{policy("shop", "p", allow, nil, &securityv1beta1.Rule{To: []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{Ports: []string{"8080"}}}}})}, client, true},
		{"ports mismatch", []Policy{policy("shop", "p", allow, nil, &securityv1beta1.Rule{To: []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{Ports: []string{"9090"}}}}})}, client, false},
		{"serviceAccounts match", []Policy{policy("shop", "p", allow, nil, &securityv1beta1.Rule{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{ServiceAccounts: []string{"shop/frontend"}}}}})}, client, true},
		{"L7 allow rule allows nothing", []Policy{policy("shop", "p", allow, nil, &securityv1beta1.Rule{To: []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{Methods: []string{"GET"}}}}})}, client, false},
		{"L7 deny rule denies at L4", []Policy{policy("shop", "p", deny, nil, &securityv1beta1.Rule{To: []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{Methods: []string{"GET"}}}}})}, client, false},
		{"when source.ip", []Policy{policy("shop", "p", allow, nil, &securityv1beta1.Rule{When: []*securityv1beta1.Condition{{Key: "source.ip", Values: []string{"198.19.1.0/24"}}}})}, client, true},
		{"targetRefs skipped", []Policy{{Namespace: "shop", Name: "w", Spec: &securityv1beta1.AuthorizationPolicy{
			Action: deny, Rules: []*securityv1beta1.Rule{{}}, TargetRefs: []*typev1beta1.PolicyTargetReference{{Kind: "Gateway", Name: "waypoint"}},
		}}}, client, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Authorize(tt.policies, root, dst, tt.req)
			if got.Allowed != tt.allowed {
				t.Errorf("Authorize allowed = %v (%s %s), want %v", got.Allowed, got.Reason, got.Policy, tt.allowed)
			}
		})
	}
}

func TestPlaintextAllowed(t *testing.T) {
	dst := Workload{Namespace: "shop", Labels: map[string]string{"app": "cart"}}
	strict := &securityv1beta1.PeerAuthentication_MutualTLS{Mode: securityv1beta1.PeerAuthentication_MutualTLS_STRICT}
	permissive := &securityv1beta1.PeerAuthentication_MutualTLS{Mode: securityv1beta1.PeerAuthentication_MutualTLS_PERMISSIVE}
	tests := []struct {
		name  string
		pas   []PeerAuth
		port  uint16
		allow bool
	}{
		{"default permissive", nil, 80, true},
		{"mesh strict", []PeerAuth{{Namespace: root, Name: "m", Spec: &securityv1beta1.PeerAuthentication{Mtls: strict}}}, 80, false},
		{"namespace overrides mesh", []PeerAuth{
			{Namespace: root, Name: "m", Spec: &securityv1beta1.PeerAuthentication{Mtls: strict}},
			{Namespace: "shop", Name: "n", Spec: &securityv1beta1.PeerAuthentication{Mtls: permissive}},
		}, 80, true},
		{"workload overrides namespace", []PeerAuth{
			{Namespace: "shop", Name: "n", Spec: &securityv1beta1.PeerAuthentication{Mtls: permissive}},
			{Namespace: "shop", Name: "w", Spec: &securityv1beta1.PeerAuthentication{Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "cart"}}, Mtls: strict}},
		}, 80, false},
		{"port level permissive", []PeerAuth{
			{Namespace: "shop", Name: "w", Spec: &securityv1beta1.PeerAuthentication{
				Selector:      &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "cart"}},
				Mtls:          strict,
				PortLevelMtls: map[uint32]*securityv1beta1.PeerAuthentication_MutualTLS{9090: permissive},
			}},
		}, 9090, true},
		{"other namespace ignored", []PeerAuth{{Namespace: "billing", Name: "n", Spec: &securityv1beta1.PeerAuthentication{Mtls: strict}}}, 80, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, source := PlaintextAllowed(tt.pas, root, dst, tt.port); got != tt.allow {
				t.Errorf("PlaintextAllowed = %v (decided by %s), want %v", got, source, tt.allow)
			}
		})
	}
}
