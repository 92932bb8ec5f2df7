package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/audit"
	"github.com/mazu-mesh/mazu-ztunnel/curator/rbescheme"
	"github.com/mazu-mesh/mazu-ztunnel/rbeauth/rbe"
)

// postTimeout bounds the POST of one contribution. The curator replies
// once the entry is durable and its checkpoint cosigned.
const postTimeout = 2 * time.Minute

// runCeremony dispatches the ceremony subcommands. Each one reads the log
// under a witness-cosigned checkpoint and replays the contributions with
// audit.FollowCeremony, so none of them trusts the curator.
func runCeremony(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const usage = "usage: mazu-curator ceremony status|contribute|verify -url URL (-policy FILE | -log-key FILE [-witness-key VKEY ...]) [flags]"
	return dispatch(ctx, args, stdout, stderr, usage, "ceremony subcommand", []subcommand{
		{"status", runCeremonyStatus},
		{"contribute", runCeremonyContribute},
		{"verify", runCeremonyVerify},
	})
}

// logFollowFlags are the flags that name a log and the witnesses whose
// cosignatures make its checkpoint trusted.
type logFollowFlags struct {
	url         string
	policyPath  string
	logKeyPath  string
	witnessKeys multiFlag
	quorum      int
}

func (l *logFollowFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.url, "url", "", "curator base URL, such as http://127.0.0.1:8080")
	fs.StringVar(&l.policyPath, "policy", "", "C2SP tlog-policy file with the log key, the witness keys and the quorum, in place of -log-key, -witness-key and -quorum")
	fs.StringVar(&l.logKeyPath, "log-key", "", "the curator's verifier key file (.vkey)")
	fs.Var(&l.witnessKeys, "witness-key", "witness verifier key (repeat); none accepts log-signed checkpoints")
	fs.IntVar(&l.quorum, "quorum", 0, "cosignatures required; 0 means ⌊2n/3⌋+1 of the -witness-key values")
}

// follow replays the log's ceremony. It returns audit.ErrNoCeremony, with
// a non-nil Ceremony, when the log has no contribution.
func (l *logFollowFlags) follow(ctx context.Context, cmd string) (*audit.Ceremony, error) {
	policy, err := l.checkpointPolicy(cmd)
	if err != nil {
		return nil, err
	}
	c, err := audit.FollowCeremony(ctx, &curator.Client{URL: l.url}, policy, time.Now())
	// A curator publishes its first checkpoint with its first entry, so a
	// missing one means an empty log. A curator that withholds its
	// checkpoint gains nothing: the curator's rules and the witnesses reject
	// a contribution that does not extend the last one.
	var httpErr *curator.HTTPError
	if errors.As(err, &httpErr) && httpErr.Path == "/checkpoint" && httpErr.Code == http.StatusNotFound {
		return &audit.Ceremony{}, fmt.Errorf("the curator has published no checkpoint yet: %w", audit.ErrNoCeremony)
	}
	return c, err
}

// checkpointPolicy builds the policy from -policy, or from -log-key,
// -witness-key and -quorum.
func (l *logFollowFlags) checkpointPolicy(cmd string) (*curator.Policy, error) {
	if l.url == "" || (l.logKeyPath == "" && l.policyPath == "") {
		return nil, fmt.Errorf("ceremony %s needs -url, and -log-key or -policy", cmd)
	}
	if l.policyPath != "" {
		if l.logKeyPath != "" || len(l.witnessKeys) > 0 || l.quorum != 0 {
			return nil, fmt.Errorf("ceremony %s: -policy replaces -log-key, -witness-key and -quorum; pass either", cmd)
		}
		text, err := os.ReadFile(l.policyPath)
		if err != nil {
			return nil, fmt.Errorf("read -policy: %w", err)
		}
		pf, err := curator.ParsePolicyFile(string(text))
		if err != nil {
			return nil, fmt.Errorf("parse -policy %s: %w", l.policyPath, err)
		}
		origin, _, _ := cutName(pf.LogVKey)
		policy, err := pf.Policy(origin)
		if err != nil {
			return nil, fmt.Errorf("build the checkpoint policy from %s: %w", l.policyPath, err)
		}
		return policy, nil
	}

	vkey, err := readTrimmed(l.logKeyPath)
	if err != nil {
		return nil, fmt.Errorf("read -log-key: %w", err)
	}
	origin, _, _ := cutName(vkey)
	policy, err := curator.NewPolicy(origin, vkey, l.witnessKeys, l.quorum)
	if err != nil {
		return nil, fmt.Errorf("build the checkpoint policy: %w", err)
	}
	return policy, nil
}

func runCeremonyStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ceremony status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var lf logFollowFlags
	lf.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}

	c, err := lf.follow(ctx, "status")
	if errors.Is(err, audit.ErrNoCeremony) {
		fmt.Fprintf(stdout, "tree size %d\ncontributions 0\nno CRS yet: run mazu-curator ceremony contribute -n BLOCKSIZE\n", c.Tree.N)
		return nil
	}
	if err != nil {
		return err
	}
	return printCeremony(stdout, c)
}

// printCeremony writes the state of the ceremony, one "key value" line
// each, for people and for scripts.
func printCeremony(w io.Writer, c *audit.Ceremony) error {
	crs, err := rbe.ParseCRS(bytes.Clone(c.CRS))
	if err != nil {
		return fmt.Errorf("parse the ceremony's CRS: %w", err)
	}
	fmt.Fprintf(w, "tree size %d\n", c.Tree.N)
	fmt.Fprintf(w, "contributions %d\n", c.Contributions)
	fmt.Fprintf(w, "fingerprint %x\n", c.Fingerprint)
	fmt.Fprintf(w, "block size %d\n", crs.N())
	if c.Closed {
		fmt.Fprintln(w, "closed true (a registration follows, so the CRS is final)")
	} else {
		fmt.Fprintln(w, "closed false (contributions are accepted until the first registration)")
	}
	return nil
}

func runCeremonyContribute(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ceremony contribute", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var lf logFollowFlags
	lf.register(fs)
	tokenPath := fs.String("token-file", "", "file with a pod-bound service-account token for the curator's audience")
	blockSize := fs.Int("n", 0, "block size (registrations per RBE block) of a new ceremony; required for the first contribution, and must match the log's later")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *tokenPath == "" {
		return errors.New("ceremony contribute needs -token-file")
	}
	token, err := readTrimmed(*tokenPath)
	if err != nil {
		return fmt.Errorf("read -token-file: %w", err)
	}
	if token == "" {
		return fmt.Errorf("-token-file %s is empty: write a token from kubectl create token into it", *tokenPath)
	}

	prev, err := ceremonyBase(ctx, &lf, *blockSize)
	if err != nil {
		return err
	}
	next, proof, err := rbe.Contribute(prev, rand.Reader)
	if err != nil {
		return fmt.Errorf("ceremony contribute: %w", err)
	}
	body, err := rbescheme.EncodeContribution(rbe.Contribution{CRS: next, Proof: proof})
	if err != nil {
		return fmt.Errorf("ceremony contribute: encode: %w", err)
	}
	index, err := postContribution(ctx, lf.url, token, body)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "entry %d\nfingerprint %x\nblock size %d\n", index, next.Fingerprint(), next.N())
	return nil
}

// ceremonyBase returns the CRS a new contribution extends: the log's
// current CRS, or the starting point rbe.NewCeremony(blockSize) when the
// log has no contribution yet.
func ceremonyBase(ctx context.Context, lf *logFollowFlags, blockSize int) (*rbe.CRS, error) {
	if blockSize < 0 {
		return nil, fmt.Errorf("invalid -n %d: want a positive block size", blockSize)
	}
	c, err := lf.follow(ctx, "contribute")
	if errors.Is(err, audit.ErrNoCeremony) {
		if blockSize == 0 {
			return nil, errors.New("the log has no contribution yet, so this one starts the ceremony: set its block size with -n, such as -n 256")
		}
		crs, err := rbe.NewCeremony(blockSize)
		if err != nil {
			return nil, fmt.Errorf("invalid -n %d: %w", blockSize, err)
		}
		return crs, nil
	}
	if err != nil {
		return nil, err
	}
	if c.Closed {
		return nil, fmt.Errorf("the ceremony is closed: a registration already uses CRS %x, so no contribution can follow", c.Fingerprint)
	}
	crs, err := rbe.ParseCRS(bytes.Clone(c.CRS))
	if err != nil {
		return nil, fmt.Errorf("parse the ceremony's CRS: %w", err)
	}
	if blockSize != 0 && blockSize != crs.N() {
		return nil, fmt.Errorf("invalid -n %d: the log's ceremony has block size %d; drop -n or set it to %d", blockSize, crs.N(), crs.N())
	}
	return crs, nil
}

// postContribution sends a contribution to POST /v1/ceremony and returns
// its log index. A 4xx error names the likely cause and what to do.
func postContribution(ctx context.Context, url, token string, body []byte) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, postTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(url, "/")+"/v1/ceremony", bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("post contribution: %w", err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("post contribution: %w", err)
	}
	defer resp.Body.Close()
	reply, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return 0, fmt.Errorf("post contribution: read reply: %w", err)
	}
	msg := string(bytes.TrimSpace(reply))

	switch {
	case resp.StatusCode == http.StatusOK:
		var kr struct {
			Index uint64 `json:"index"`
		}
		if err := json.Unmarshal(reply, &kr); err != nil {
			return 0, fmt.Errorf("post contribution: decode reply: %w", err)
		}
		return kr.Index, nil
	case resp.StatusCode == http.StatusForbidden:
		return 0, fmt.Errorf("post contribution: the curator rejected the token (%s); pass -token-file with a token from kubectl create token, bound to a running pod and for the curator's audience (its log origin)", msg)
	case resp.StatusCode == http.StatusBadRequest && strings.Contains(msg, "after the first registration"):
		return 0, fmt.Errorf("post contribution: the ceremony is closed because a registration already uses its CRS, so this contribution is too late (%s)", msg)
	case resp.StatusCode == http.StatusBadRequest:
		// The curator checks that a contribution extends the CRS of the
		// last one. The usual cause of a failure is a contribution that
		// another contributor sequenced after this one read the log.
		return 0, fmt.Errorf("post contribution: the curator rejected it (%s); if another contribution came first, run ceremony contribute again", msg)
	}
	return 0, fmt.Errorf("post contribution: %s: %s", resp.Status, msg)
}

func runCeremonyVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ceremony verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var lf logFollowFlags
	lf.register(fs)
	crsPath := fs.String("crs", "", "CRS file whose fingerprint must equal the ceremony's result")
	outPath := fs.String("out", "", "file to write the verified CRS encoding to")
	if err := fs.Parse(args); err != nil {
		return err
	}

	c, err := lf.follow(ctx, "verify")
	if err != nil {
		return fmt.Errorf("ceremony verify: %w", err)
	}
	if err := printCeremony(stdout, c); err != nil {
		return err
	}
	if *crsPath != "" {
		if err := checkCRSFile(*crsPath, c.Fingerprint); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s matches the ceremony's CRS\n", *crsPath)
	}
	if *outPath != "" {
		if err := os.WriteFile(*outPath, c.CRS, 0o644); err != nil {
			return fmt.Errorf("write -out: %w", err)
		}
		fmt.Fprintf(stdout, "wrote the CRS to %s\n", *outPath)
	}
	if !c.Closed {
		fmt.Fprintln(stdout, "NOTE: the ceremony is still open, so later contributions change the CRS")
	}
	return nil
}

// checkCRSFile requires the CRS in path to have fingerprint want.
func checkCRSFile(path string, want [32]byte) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read -crs: %w", err)
	}
	crs, err := rbe.ParseCRS(b)
	if err != nil {
		return fmt.Errorf("parse -crs %s: %w", path, err)
	}
	if got := crs.Fingerprint(); got != want {
		return fmt.Errorf("CRS mismatch: %s has fingerprint %x, the log's ceremony yields %x", path, got, want)
	}
	return nil
}
