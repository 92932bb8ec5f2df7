package agent

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	securityv1beta1 "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
)

// Policy is an AuthorizationPolicy as read from the Kubernetes API.
type Policy struct {
	Namespace string
	Name      string
	Spec      *securityv1beta1.AuthorizationPolicy
}

// PeerAuth is a PeerAuthentication as read from the Kubernetes API.
type PeerAuth struct {
	Namespace string
	Name      string
	Spec      *securityv1beta1.PeerAuthentication
}

// Request holds the L4 facts an inbound connection is authorized on.
type Request struct {
	// SourcePrincipal is the verified peer identity without the spiffe://
	// prefix (cluster.local/ns/x/sa/y), or "" for plaintext.
	SourcePrincipal string
	SourceNamespace string
	SourceIP        netip.Addr
	DestinationIP   netip.Addr
	DestinationPort uint16
}

// Decision is the outcome of authorization.
type Decision struct {
	Allowed bool
	// Policy names the namespace/name of the deciding policy, or "" when no
	// policy decided.
	Policy string
	Reason string
}

// Workload is the destination workload's metadata that policies select on.
type Workload struct {
	Namespace string
	Labels    map[string]string
}

// Authorize applies Istio's L4 AuthorizationPolicy semantics as ztunnel
// enforces them: a matching DENY policy rejects; otherwise, if any ALLOW
// policy applies to the workload, one of them must match. Policies with
// CUSTOM or AUDIT actions are not enforced at L4 and are skipped.
func Authorize(policies []Policy, rootNamespace string, dst Workload, req Request) Decision {
	var allows []Policy
	for _, p := range policies {
		if !policyApplies(p, rootNamespace, dst) {
			continue
		}
		switch p.Spec.GetAction() {
		case securityv1beta1.AuthorizationPolicy_DENY:
			if rulesMatch(p.Spec.GetRules(), securityv1beta1.AuthorizationPolicy_DENY, req) {
				return Decision{Allowed: false, Policy: p.Namespace + "/" + p.Name, Reason: "denied by policy"}
			}
		case securityv1beta1.AuthorizationPolicy_ALLOW:
			allows = append(allows, p)
		}
	}
	if len(allows) == 0 {
		return Decision{Allowed: true, Reason: "no policy applies"}
	}
	for _, p := range allows {
		if rulesMatch(p.Spec.GetRules(), securityv1beta1.AuthorizationPolicy_ALLOW, req) {
			return Decision{Allowed: true, Policy: p.Namespace + "/" + p.Name, Reason: "allowed by policy"}
		}
	}
	return Decision{Allowed: false, Reason: "allow policies exist, but none allowed"}
}

// policyApplies decides scope: a policy in the root namespace applies mesh
// wide, any other only in its namespace, and a selector narrows either to
// workloads with matching labels. Policies that target a waypoint or
// gateway through targetRefs are not for the node proxy.
func policyApplies(p Policy, rootNamespace string, dst Workload) bool {
	if hasTargetRefs(p.Spec) {
		return false
	}
	if p.Namespace != rootNamespace && p.Namespace != dst.Namespace {
		return false
	}
	return selectorMatches(p.Spec.GetSelector(), dst.Labels)
}

func hasTargetRefs(spec *securityv1beta1.AuthorizationPolicy) bool {
	return len(spec.GetTargetRefs()) > 0 || spec.GetTargetRef() != nil
}

// policyNotEnforced returns why Authorize never enforces a policy, or ""
// when it may.
func policyNotEnforced(p Policy) string {
	if hasTargetRefs(p.Spec) {
		return "targetRefs select a waypoint or gateway, which mazu-ztunnel does not run"
	}
	switch p.Spec.GetAction() {
	case securityv1beta1.AuthorizationPolicy_CUSTOM, securityv1beta1.AuthorizationPolicy_AUDIT:
		return p.Spec.GetAction().String() + " policies are not enforced at L4"
	}
	return ""
}

func selectorMatches(sel *typev1beta1.WorkloadSelector, labels map[string]string) bool {
	for k, v := range sel.GetMatchLabels() {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// rulesMatch reports whether any rule matches. A rule that uses an
// attribute only an L7 proxy can see is handled as istiod handles it for
// ztunnel. In an ALLOW policy the rule is dropped, so it allows nothing. In
// a DENY policy the L7 parts are ignored, so it denies at least as much.
func rulesMatch(rules []*securityv1beta1.Rule, action securityv1beta1.AuthorizationPolicy_Action, req Request) bool {
	for _, rule := range rules {
		if rule == nil {
			continue
		}
		if hasL7(rule) && action == securityv1beta1.AuthorizationPolicy_ALLOW {
			continue
		}
		if ruleMatches(rule, req) {
			return true
		}
	}
	return false
}

func ruleMatches(rule *securityv1beta1.Rule, req Request) bool {
	if len(rule.GetFrom()) > 0 {
		matched := false
		for _, from := range rule.GetFrom() {
			if sourceMatches(from.GetSource(), req) {
				matched = true
				break
			}
		}
		if !matched {
			return false
		}
	}
	if len(rule.GetTo()) > 0 {
		matched := false
		for _, to := range rule.GetTo() {
			if operationMatches(to.GetOperation(), req) {
				matched = true
				break
			}
		}
		if !matched {
			return false
		}
	}
	for _, cond := range rule.GetWhen() {
		if !conditionMatches(cond, req) {
			return false
		}
	}
	return true
}

func sourceMatches(src *securityv1beta1.Source, req Request) bool {
	if src == nil {
		return true
	}
	return valuesMatch(src.GetPrincipals(), src.GetNotPrincipals(), func(p string) bool { return stringMatch(p, req.SourcePrincipal) }) &&
		valuesMatch(src.GetNamespaces(), src.GetNotNamespaces(), func(n string) bool { return stringMatch(n, req.SourceNamespace) }) &&
		valuesMatch(src.GetServiceAccounts(), src.GetNotServiceAccounts(), func(sa string) bool { return serviceAccountMatch(sa, req.SourcePrincipal) }) &&
		valuesMatch(append(src.GetIpBlocks(), src.GetRemoteIpBlocks()...), append(src.GetNotIpBlocks(), src.GetNotRemoteIpBlocks()...), func(b string) bool { return ipMatch(b, req.SourceIP) })
}

func operationMatches(op *securityv1beta1.Operation, req Request) bool {
	if op == nil {
		return true
	}
	port := strconv.Itoa(int(req.DestinationPort))
	return valuesMatch(op.GetPorts(), op.GetNotPorts(), func(p string) bool { return p == port })
}

// conditionMatches evaluates the L4 condition keys. Other keys are L7 and
// never reach here for ALLOW rules; in DENY rules they are ignored.
func conditionMatches(cond *securityv1beta1.Condition, req Request) bool {
	var match func(string) bool
	switch cond.GetKey() {
	case "source.ip", "remote.ip":
		match = func(v string) bool { return ipMatch(v, req.SourceIP) }
	case "source.namespace":
		match = func(v string) bool { return stringMatch(v, req.SourceNamespace) }
	case "source.principal":
		match = func(v string) bool { return stringMatch(v, req.SourcePrincipal) }
	case "destination.ip":
		match = func(v string) bool { return ipMatch(v, req.DestinationIP) }
	case "destination.port":
		match = func(v string) bool { return v == strconv.Itoa(int(req.DestinationPort)) }
	default:
		return true
	}
	return valuesMatch(cond.GetValues(), cond.GetNotValues(), match)
}

// valuesMatch applies one attribute: a value list (OR) and a negated list.
// Empty lists impose nothing.
func valuesMatch(values, notValues []string, match func(string) bool) bool {
	if len(values) > 0 {
		found := false
		for _, v := range values {
			if match(v) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	for _, v := range notValues {
		if match(v) {
			return false
		}
	}
	return true
}

// l4ConditionKeys are the condition keys a node proxy can evaluate.
var l4ConditionKeys = map[string]bool{
	"source.ip": true, "remote.ip": true, "source.namespace": true, "source.principal": true,
	"destination.ip": true, "destination.port": true,
}

func hasL7(rule *securityv1beta1.Rule) bool {
	for _, from := range rule.GetFrom() {
		s := from.GetSource()
		if len(s.GetRequestPrincipals()) > 0 || len(s.GetNotRequestPrincipals()) > 0 {
			return true
		}
	}
	for _, to := range rule.GetTo() {
		op := to.GetOperation()
		if len(op.GetHosts())+len(op.GetNotHosts())+len(op.GetMethods())+len(op.GetNotMethods())+len(op.GetPaths())+len(op.GetNotPaths()) > 0 {
			return true
		}
	}
	for _, cond := range rule.GetWhen() {
		if !l4ConditionKeys[cond.GetKey()] {
			return true
		}
	}
	return false
}

// stringMatch applies Istio's string patterns: exact, "*" for any
// non-empty value, "prefix*" and "*suffix".
func stringMatch(pattern, value string) bool {
	switch {
	case pattern == "*":
		return value != ""
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(value, strings.TrimSuffix(pattern, "*"))
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(value, strings.TrimPrefix(pattern, "*"))
	default:
		return pattern == value
	}
}

// serviceAccountMatch matches a serviceAccounts entry, written ns/sa, against
// a principal td/ns/<ns>/sa/<sa>.
func serviceAccountMatch(entry, principal string) bool {
	ns, sa, ok := strings.Cut(entry, "/")
	if !ok {
		return false
	}
	return strings.HasSuffix(principal, fmt.Sprintf("/ns/%s/sa/%s", ns, sa))
}

func ipMatch(block string, ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	if prefix, err := netip.ParsePrefix(block); err == nil {
		return prefix.Contains(ip.Unmap())
	}
	if addr, err := netip.ParseAddr(block); err == nil {
		return addr.Unmap() == ip.Unmap()
	}
	return false
}

// PlaintextAllowed reports whether a plaintext (non-HBONE) inbound
// connection to port may reach the workload under PeerAuthentication. The
// most specific policy wins: a workload selector, then the namespace, then
// the root namespace. Without any the mode is PERMISSIVE, Istio's default.
func PlaintextAllowed(peerAuths []PeerAuth, rootNamespace string, dst Workload, port uint16) (bool, string) {
	var workload, namespace, mesh *PeerAuth
	for i := range peerAuths {
		pa := &peerAuths[i]
		sel := pa.Spec.GetSelector()
		switch {
		case pa.Namespace == dst.Namespace && len(sel.GetMatchLabels()) > 0 && selectorMatches(sel, dst.Labels):
			workload = pa
		case pa.Namespace == dst.Namespace && len(sel.GetMatchLabels()) == 0:
			namespace = pa
		case pa.Namespace == rootNamespace && len(sel.GetMatchLabels()) == 0:
			mesh = pa
		}
	}
	mode := securityv1beta1.PeerAuthentication_MutualTLS_UNSET
	source := "default"
	for _, pa := range []*PeerAuth{mesh, namespace, workload} {
		if pa == nil {
			continue
		}
		if m := pa.Spec.GetMtls().GetMode(); m != securityv1beta1.PeerAuthentication_MutualTLS_UNSET {
			mode, source = m, pa.Namespace+"/"+pa.Name
		}
	}
	if workload != nil {
		if portMode, ok := workload.Spec.GetPortLevelMtls()[uint32(port)]; ok && portMode.GetMode() != securityv1beta1.PeerAuthentication_MutualTLS_UNSET {
			mode, source = portMode.GetMode(), workload.Namespace+"/"+workload.Name
		}
	}
	return mode != securityv1beta1.PeerAuthentication_MutualTLS_STRICT, source
}
