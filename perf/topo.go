package perf

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Topology is five network namespaces inside 198.18.96.0/20:
//
//	cpod 198.18.96.1 ── 198.18.96.2 nodeA 198.18.97.1 ══ 198.18.97.2 nodeB 198.18.98.1 ── 198.18.98.2 spod
//	                                nodeA 198.18.99.1 ── 198.18.99.2 spod2 (same-node server)
//
// The nodes forward between their links; the pods route through their node.
// Every veth pair is created inside a namespace with its peer in another,
// so no link or address ever exists in the host namespace.
type Topology struct {
	Prefix string
	CPod   string
	NodeA  string
	NodeB  string
	SPod   string
	SPod2  string
}

// Addresses of the topology.
const (
	ipCPod     = "198.18.96.1"
	ipNodeACli = "198.18.96.2" // node A, facing the client pod
	ipNodeA    = "198.18.97.1" // node A, facing node B
	ipNodeB    = "198.18.97.2" // node B, facing node A
	ipNodeBSrv = "198.18.98.1"
	ipSPod     = "198.18.98.2"
	ipNodeASrv = "198.18.99.1"
	ipSPod2    = "198.18.99.2"
)

func ipCmd(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// NewTopology creates the namespaces and links. On error it removes what
// it created.
func NewTopology(ctx context.Context) (t *Topology, err error) {
	var r [2]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil, fmt.Errorf("topology name: %w", err)
	}
	p := "mzt-perf-" + hex.EncodeToString(r[:])
	t = &Topology{Prefix: p, CPod: p + "-cpod", NodeA: p + "-nodea", NodeB: p + "-nodeb", SPod: p + "-spod", SPod2: p + "-spod2"}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	for _, ns := range t.namespaces() {
		if err := ipCmd(ctx, "netns", "add", ns); err != nil {
			return t, err
		}
		if err := ipCmd(ctx, "-n", ns, "link", "set", "lo", "up"); err != nil {
			return t, err
		}
	}
	type link struct {
		nsA, devA, ipA string
		nsB, devB, ipB string
	}
	links := []link{
		{t.CPod, p + "c0", ipCPod, t.NodeA, p + "c1", ipNodeACli},
		{t.NodeA, p + "n0", ipNodeA, t.NodeB, p + "n1", ipNodeB},
		{t.NodeB, p + "s1", ipNodeBSrv, t.SPod, p + "s0", ipSPod},
		{t.NodeA, p + "t1", ipNodeASrv, t.SPod2, p + "t0", ipSPod2},
	}
	for _, l := range links {
		if err := ipCmd(ctx, "-n", l.nsA, "link", "add", l.devA, "type", "veth", "peer", "name", l.devB, "netns", l.nsB); err != nil {
			return t, err
		}
		for _, c := range [][]string{
			{"-n", l.nsA, "addr", "add", l.ipA + "/30", "dev", l.devA},
			{"-n", l.nsB, "addr", "add", l.ipB + "/30", "dev", l.devB},
			{"-n", l.nsA, "link", "set", l.devA, "up"},
			{"-n", l.nsB, "link", "set", l.devB, "up"},
		} {
			if err := ipCmd(ctx, c...); err != nil {
				return t, err
			}
		}
	}
	for _, c := range [][]string{
		{"-n", t.CPod, "route", "add", "198.18.96.0/20", "via", ipNodeACli},
		{"-n", t.SPod, "route", "add", "198.18.96.0/20", "via", ipNodeBSrv},
		{"-n", t.SPod2, "route", "add", "198.18.96.0/20", "via", ipNodeASrv},
		{"-n", t.NodeA, "route", "add", "198.18.98.0/30", "via", ipNodeB},
		{"-n", t.NodeB, "route", "add", "198.18.96.0/30", "via", ipNodeA},
		{"-n", t.NodeB, "route", "add", "198.18.99.0/30", "via", ipNodeA},
		{"netns", "exec", t.NodeA, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"},
		{"netns", "exec", t.NodeB, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"},
	} {
		if err := ipCmd(ctx, c...); err != nil {
			return t, err
		}
	}
	return t, nil
}

func (t *Topology) namespaces() []string {
	return []string{t.CPod, t.NodeA, t.NodeB, t.SPod, t.SPod2}
}

// Close deletes the namespaces, which deletes their veth pairs too.
func (t *Topology) Close() error {
	var errs []error
	for _, ns := range t.namespaces() {
		out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput()
		if err != nil && !strings.Contains(string(out), "No such file") {
			errs = append(errs, fmt.Errorf("delete namespace %s: %w: %s", ns, err, strings.TrimSpace(string(out))))
		}
	}
	return errors.Join(errs...)
}
