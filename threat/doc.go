// Package threat is an end-to-end suite of attacks from the threat model in
// SECURITY.md. Each runs against real components: the testbed's
// kube-apiserver, istiod and nodes, and a curator with two witnesses. Node
// agents with eBPF capture and HBONE run in the test process, and pods are
// enrolled through the real mazu-cni binary.
//
// Each TestAttack test carries out one attack on the data path and fails
// if the attack succeeds. It also checks a positive control (the genuine
// workload still gets through), so a test cannot pass because everything
// fails. Where the defence is a rejection, it counts only when the agent
// that rejected the attacker counted it in mazu_peer_verifications_total
// with the expected reason.
//
// The tests share one mesh: a curator, two nodes with an agent each, and a
// bare node without an agent for attacker pods. Each test creates its own
// namespaces and pods and deletes them. Run as root with the testbed's
// binaries:
//
//	MAZU_K8S_BIN=$(.ci/k8s/build.sh dir) go test -count=1 -p 1 ./threat/
//
// Without root the tests are skipped, or fail under
// MAZU_REQUIRE_PRIVILEGED=1.
package threat
