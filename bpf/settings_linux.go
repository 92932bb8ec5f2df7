package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
)

// Ports and addresses of the in-pod contract shared with istio-cni and
// ztunnel.
const (
	DefaultInterface    = "eth0"
	DefaultOutboundPort = 15001
	DefaultInboundPort  = 15006
	DefaultHBONEPort    = 15008
)

var (
	// DefaultProbeIPv4 is the source address that kubelet probes carry after
	// the node's SNAT, as in istio-cni.
	DefaultProbeIPv4 = netip.MustParseAddr("169.254.7.127")
	// DefaultProbeIPv6 is the IPv6 counterpart of DefaultProbeIPv4.
	DefaultProbeIPv6 = netip.MustParseAddr("fd16:9254:7127:1337:ffff:ffff:ffff:ffff")
)

// Settings are the capture settings of one pod. The zero value means the
// defaults of istio-cni's in-pod rules.
type Settings struct {
	// Interface is the pod's interface toward the node, where inbound
	// connections are captured. Empty means DefaultInterface.
	Interface string

	// OutboundPort is the in-pod outbound listener on 127.0.0.1 and ::1.
	// Zero means DefaultOutboundPort.
	OutboundPort uint16

	// InboundPort is the in-pod plaintext inbound listener. Zero means
	// DefaultInboundPort.
	InboundPort uint16

	// HBONEPort is the in-pod HBONE listener; connections to this port go to
	// it. Zero means DefaultHBONEPort.
	HBONEPort uint16

	// ProbeIPv4 and ProbeIPv6 are the source addresses of kubelet probes.
	// Connections from them reach the application directly. The zero value
	// means DefaultProbeIPv4 and DefaultProbeIPv6.
	ProbeIPv4 netip.Addr
	ProbeIPv6 netip.Addr

	// ExcludeCIDRs are outbound destinations that are never captured. The
	// pod's own addresses are always excluded, like istio-cni's rule for
	// traffic that stays on lo.
	ExcludeCIDRs []netip.Prefix

	// ExcludePorts are outbound destination ports that are never captured.
	ExcludePorts []uint16

	// ExcludeInboundPorts are inbound destination ports delivered straight to
	// the application.
	ExcludeInboundPorts []uint16
}

func (s Settings) withDefaults() Settings {
	if s.Interface == "" {
		s.Interface = DefaultInterface
	}
	if s.OutboundPort == 0 {
		s.OutboundPort = DefaultOutboundPort
	}
	if s.InboundPort == 0 {
		s.InboundPort = DefaultInboundPort
	}
	if s.HBONEPort == 0 {
		s.HBONEPort = DefaultHBONEPort
	}
	if !s.ProbeIPv4.IsValid() {
		s.ProbeIPv4 = DefaultProbeIPv4
	}
	if !s.ProbeIPv6.IsValid() {
		s.ProbeIPv6 = DefaultProbeIPv6
	}
	return s
}

// validate checks settings that withDefaults has filled in, and reports all
// problems at once.
func (s Settings) validate() error {
	var errs []error
	if s.InboundPort == s.HBONEPort {
		errs = append(errs, fmt.Errorf("inbound port %d equals the HBONE port: use distinct ports", s.InboundPort))
	}
	if !s.ProbeIPv4.Is4() {
		errs = append(errs, fmt.Errorf("probe IPv4 address %s is not IPv4", s.ProbeIPv4))
	}
	if !s.ProbeIPv6.Is6() || s.ProbeIPv6.Is4In6() {
		errs = append(errs, fmt.Errorf("probe IPv6 address %s is not IPv6", s.ProbeIPv6))
	}
	for _, p := range s.ExcludeCIDRs {
		if !p.IsValid() {
			errs = append(errs, fmt.Errorf("excluded CIDR %s is invalid", p))
		}
	}
	for _, ports := range [][]uint16{s.ExcludePorts, s.ExcludeInboundPorts} {
		if slices.Contains(ports, 0) {
			errs = append(errs, errors.New("excluded port 0 is invalid: ports are 1 to 65535"))
		}
	}
	return errors.Join(errs...)
}

var podIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// validatePodID checks that id can name a pin directory and fits the
// 64-byte key of the pod ID map.
func validatePodID(id string) error {
	if !podIDPattern.MatchString(id) {
		return fmt.Errorf("pod ID %q is invalid: use 1 to 63 letters, digits, '.', '_' or '-', such as the pod UID", id)
	}
	return nil
}

// addrWords returns the 16-byte form of a (IPv4-mapped for IPv4) as the
// four 32-bit words the programs compare, in memory order.
func addrWords(a netip.Addr) [4]uint32 {
	b := a.As16()
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[i*4:])
	}
	return w
}

// wordsAddr is the inverse of addrWords. It unmaps IPv4-mapped addresses.
func wordsAddr(w [4]uint32) netip.Addr {
	var b [16]byte
	for i := range w {
		binary.NativeEndian.PutUint32(b[i*4:], w[i])
	}
	return netip.AddrFrom16(b).Unmap()
}

// cidrKey returns the LPM trie key of prefix p in namespace netns.
func cidrKey(netns uint64, p netip.Prefix) captureCidrKey {
	p = p.Masked()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	return captureCidrKey{
		Prefixlen: uint32(64 + bits),
		Netns:     [2]uint32{uint32(netns), uint32(netns >> 32)},
		Addr:      addrWords(p.Addr()),
	}
}

// cidrFromKey is the inverse of cidrKey.
func cidrFromKey(k captureCidrKey) (uint64, netip.Prefix) {
	netns := uint64(k.Netns[0]) | uint64(k.Netns[1])<<32
	a := wordsAddr(k.Addr)
	bits := int(k.Prefixlen) - 64
	if a.Is4() {
		bits -= 96
	}
	return netns, netip.PrefixFrom(a, bits)
}
