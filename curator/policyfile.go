package curator

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
)

// A PolicyWitness is a witness named in a policy file.
type PolicyWitness struct {
	Name string
	VKey string // cosignature/v1 verifier key
	URL  string // its add-checkpoint base URL, if the file gives one
}

// A PolicyFile is a parsed C2SP tlog-policy file.
type PolicyFile struct {
	LogVKey   string
	LogURL    string
	Witnesses []PolicyWitness // the members of the quorum
	Quorum    int             // cosignatures required; 0 with "quorum none"
}

// ParsePolicyFile parses the C2SP tlog-policy lines "log <vkey> [<url>]",
// "witness <name> <vkey> [<url>]", "group <name> <k|any|all> <member>..."
// and "quorum <name>|none". Comments start with #.
//
// Only flat policies are supported: the quorum names one witness, or one
// group whose members are witnesses, because Policy is a k-of-n rule.
func ParsePolicyFile(text string) (*PolicyFile, error) {
	pf := &PolicyFile{}
	witnesses := map[string]PolicyWitness{}
	type group struct {
		k       string
		members []string
	}
	groups := map[string]group{}
	quorum := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		bad := func(want string) error {
			return fmt.Errorf("policy line %d %q: want %s", n, strings.TrimSpace(line), want)
		}
		switch f[0] {
		case "log":
			if len(f) < 2 || len(f) > 3 || pf.LogVKey != "" {
				return nil, bad("one line: log <vkey> [<url>]")
			}
			pf.LogVKey = f[1]
			if len(f) == 3 {
				pf.LogURL = f[2]
			}
		case "witness":
			if len(f) < 3 || len(f) > 4 {
				return nil, bad("witness <name> <vkey> [<url>]")
			}
			if _, err := NewCosignatureVerifier(f[2]); err != nil {
				return nil, fmt.Errorf("policy line %d: %w", n, err)
			}
			w := PolicyWitness{Name: f[1], VKey: f[2]}
			if len(f) == 4 {
				w.URL = f[3]
			}
			witnesses[f[1]] = w
		case "group":
			if len(f) < 4 {
				return nil, bad("group <name> <k|any|all> <member>...")
			}
			groups[f[1]] = group{k: f[2], members: f[3:]}
		case "quorum":
			if len(f) != 2 || quorum != "" {
				return nil, bad("one line: quorum <name>|none")
			}
			quorum = f[1]
		default:
			return nil, bad("a log, witness, group or quorum line")
		}
	}
	if pf.LogVKey == "" {
		return nil, fmt.Errorf("policy has no log line")
	}
	switch g, isGroup := groups[quorum]; {
	case quorum == "" || quorum == "none":
		return pf, nil
	case !isGroup:
		w, ok := witnesses[quorum]
		if !ok {
			return nil, fmt.Errorf("policy quorum %q names no witness or group", quorum)
		}
		pf.Witnesses, pf.Quorum = []PolicyWitness{w}, 1
	default:
		for _, m := range g.members {
			w, ok := witnesses[m]
			if !ok {
				return nil, fmt.Errorf("policy group %q member %q is not a witness; nested groups are not supported", quorum, m)
			}
			pf.Witnesses = append(pf.Witnesses, w)
		}
		switch g.k {
		case "any":
			pf.Quorum = 1
		case "all":
			pf.Quorum = len(pf.Witnesses)
		default:
			k, err := strconv.Atoi(g.k)
			if err != nil || k < 1 || k > len(pf.Witnesses) {
				return nil, fmt.Errorf("policy group %q threshold %q: want any, all or 1..%d", quorum, g.k, len(pf.Witnesses))
			}
			pf.Quorum = k
		}
	}
	return pf, nil
}

// Policy returns the client policy for the log origin.
func (pf *PolicyFile) Policy(origin string) (*Policy, error) {
	vkeys := make([]string, len(pf.Witnesses))
	for i, w := range pf.Witnesses {
		vkeys[i] = w.VKey
	}
	p, err := NewPolicy(origin, pf.LogVKey, vkeys, pf.Quorum)
	if err != nil {
		return nil, err
	}
	if pf.Quorum == 0 {
		// "quorum none": the log signature alone.
		p.Witnesses = nil
	}
	return p, nil
}
