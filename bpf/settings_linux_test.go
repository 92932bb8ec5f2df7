package bpf

import (
	"net/netip"
	"strings"
	"testing"
)

func TestSettingsValidate(t *testing.T) {
	tests := []struct {
		name    string
		s       Settings
		wantErr string
	}{
		{"zero value gets istio-cni defaults", Settings{}, ""},
		{"same inbound and HBONE port is rejected", Settings{InboundPort: 15008}, "equals the HBONE port"},
		{"IPv6 probe address in the IPv4 field is rejected", Settings{ProbeIPv4: netip.MustParseAddr("fd00::1")}, "is not IPv4"},
		{"IPv4-mapped probe address in the IPv6 field is rejected", Settings{ProbeIPv6: netip.MustParseAddr("::ffff:1.2.3.4")}, "is not IPv6"},
		{"invalid CIDR is rejected", Settings{ExcludeCIDRs: []netip.Prefix{{}}}, "is invalid"},
		{"port 0 is rejected", Settings{ExcludePorts: []uint16{0}}, "port 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.s.withDefaults().validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("validate() = %v, want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("validate() = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}

	d := Settings{}.withDefaults()
	if d.OutboundPort != 15001 || d.InboundPort != 15006 || d.HBONEPort != 15008 || d.ProbeIPv4 != DefaultProbeIPv4 || d.Interface != "eth0" {
		t.Errorf("defaults = %+v, want 15001/15006/15008, %s on eth0", d, DefaultProbeIPv4)
	}
}

func TestPodID(t *testing.T) {
	for _, id := range []string{"a", "0f6c1b2e-1b1a-4c0e-9d3e-4f5a6b7c8d9e", strings.Repeat("x", 63)} {
		if err := validatePodID(id); err != nil {
			t.Errorf("validatePodID(%q) = %v, want nil", id, err)
		}
		if got := podIDString(podIDKey(id)); got != id {
			t.Errorf("podIDString(podIDKey(%q)) = %q", id, got)
		}
	}
	for _, id := range []string{"", "../x", "a/b", ".hidden", strings.Repeat("x", 64)} {
		if err := validatePodID(id); err == nil {
			t.Errorf("validatePodID(%q) = nil, want an error", id)
		}
	}
}

func TestCIDRKeyRoundTrip(t *testing.T) {
	const netns = 0x1122334455667788
	for _, s := range []string{"198.18.66.0/24", "0.0.0.0/0", "10.1.2.3/32", "fd00:198:18::/48", "::/0"} {
		p := netip.MustParsePrefix(s)
		k := cidrKey(netns, p)
		gotNetns, got := cidrFromKey(k)
		if gotNetns != netns || got != p {
			t.Errorf("cidrFromKey(cidrKey(%s)) = %#x, %s", p, gotNetns, got)
		}
	}
	if k := cidrKey(1, netip.MustParsePrefix("198.18.66.0/24")); k.Prefixlen != 64+96+24 {
		t.Errorf("IPv4 /24 prefixlen = %d, want %d", k.Prefixlen, 64+96+24)
	}
}

func TestParseSockaddr(t *testing.T) {
	v4 := []byte{2, 0, 0x1f, 0x90, 198, 18, 64, 1, 0, 0, 0, 0, 0, 0, 0, 0}
	if got, err := parseSockaddr(v4); err != nil || got != netip.MustParseAddrPort("198.18.64.1:8080") {
		t.Errorf("parseSockaddr(v4) = %s, %v", got, err)
	}
	v6 := make([]byte, 28)
	v6[0] = 10
	v6[2], v6[3] = 0x1f, 0x90
	a := netip.MustParseAddr("fd00:198:18:64::1").As16()
	copy(v6[8:], a[:])
	if got, err := parseSockaddr(v6); err != nil || got != netip.MustParseAddrPort("[fd00:198:18:64::1]:8080") {
		t.Errorf("parseSockaddr(v6) = %s, %v", got, err)
	}
	for _, bad := range [][]byte{nil, {2}, {2, 0, 0, 80}, {99, 0, 0, 80, 1, 2, 3, 4}} {
		if _, err := parseSockaddr(bad); err == nil {
			t.Errorf("parseSockaddr(%v) = nil error, want one", bad)
		}
	}
}
