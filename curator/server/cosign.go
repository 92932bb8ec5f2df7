package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
)

// A Witness is a cosigner the curator requests a cosignature from for every checkpoint, through
// the C2SP tlog-witness add-checkpoint call.
type Witness struct {
	URL      string        // base URL; the call goes to URL + "/add-checkpoint"
	Verifier note.Verifier // its cosignature/v1 key
	Client   *http.Client  // default http.DefaultClient
}

// publish signs a checkpoint for tree, collects cosignatures and, with a
// quorum, stores and serves it. It returns the published note, or nil.
func (l *Log) publish(ctx context.Context, tree tlog.Tree) []byte {
	l.publishMu.Lock()
	defer l.publishMu.Unlock()
	signed, err := note.Sign(&note.Note{Text: string(curator.FormatCheckpoint(l.cfg.Origin, tree))}, l.cfg.Signer)
	if err != nil {
		l.log.Error("sign checkpoint", "size", tree.N, "err", err)
		return nil
	}
	cp := signed
	if len(l.cfg.Witnesses) > 0 {
		cp, err = l.cosign(ctx, signed, tree)
		if err != nil {
			l.log.Warn("checkpoint not published", "size", tree.N, "err", err)
			return nil
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if tree.N < l.currentSizeLocked() {
		return nil
	}
	if err := l.cfg.Store.SetCheckpoint(cp); err != nil {
		l.log.Error("store checkpoint", "size", tree.N, "err", err)
	}
	l.checkpoint, l.checkpointTree = cp, tree
	return cp
}

func (l *Log) currentSizeLocked() int64 {
	if l.checkpoint == nil {
		return 0
	}
	return l.checkpointTree.N
}

// cosign requests cosignatures from all witnesses in parallel and returns the note with every
// cosignature received, or an error below quorum.
func (l *Log) cosign(ctx context.Context, signed []byte, tree tlog.Tree) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.WitnessTimeout)
	defer cancel()
	type answer struct {
		line []byte
		err  error
	}
	answers := make([]answer, len(l.cfg.Witnesses))
	var wg sync.WaitGroup
	for i, w := range l.cfg.Witnesses {
		wg.Add(1)
		go func() {
			defer wg.Done()
			line, err := l.cosignOne(ctx, w, signed, tree)
			answers[i] = answer{line, err}
		}()
	}
	wg.Wait()
	out := bytes.Clone(signed)
	var errs []error
	got := 0
	for i, a := range answers {
		if a.err != nil {
			errs = append(errs, fmt.Errorf("witness %s: %w", l.cfg.Witnesses[i].URL, a.err))
			continue
		}
		out = append(out, a.line...)
		got++
	}
	if got < l.cfg.Quorum {
		return nil, fmt.Errorf("%d of %d cosignatures, need %d: %w", got, len(l.cfg.Witnesses), l.cfg.Quorum, errors.Join(errs...))
	}
	return out, nil
}

func (l *Log) cosignOne(ctx context.Context, w Witness, signed []byte, tree tlog.Tree) ([]byte, error) {
	for attempt := 0; attempt < 2; attempt++ {
		l.mu.RLock()
		old := l.witnessAt[w.URL]
		l.mu.RUnlock()
		line, size, err := l.addCheckpoint(ctx, w, old, signed, tree)
		if errors.Is(err, errWitnessSize) {
			l.mu.Lock()
			l.witnessAt[w.URL] = size
			l.mu.Unlock()
			l.m.cosignatures.WithLabelValues("conflict").Inc()
			continue
		}
		if err != nil {
			result := "error"
			if errors.Is(err, errWitnessRejected) {
				result = "rejected"
			}
			l.m.cosignatures.WithLabelValues(result).Inc()
			return nil, err
		}
		l.mu.Lock()
		l.witnessAt[w.URL] = tree.N
		l.mu.Unlock()
		l.m.cosignatures.WithLabelValues("ok").Inc()
		return line, nil
	}
	return nil, errors.New("witness size changed twice")
}

var errWitnessSize = errors.New("witness has another size")

// errWitnessRejected marks a witness reply other than 200 and 409, such as
// 422 for a rule violation or an inconsistent checkpoint.
var errWitnessRejected = errors.New("witness rejected the checkpoint")

// AddCheckpointBody formats a C2SP tlog-witness add-checkpoint request.
func AddCheckpointBody(old int64, proof tlog.TreeProof, signed []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "old %d\n", old)
	for _, h := range proof {
		b.WriteString(base64.StdEncoding.EncodeToString(h[:]) + "\n")
	}
	b.WriteString("\n")
	b.Write(signed)
	return b.Bytes()
}

func (l *Log) addCheckpoint(ctx context.Context, w Witness, old int64, signed []byte, tree tlog.Tree) ([]byte, int64, error) {
	var proof tlog.TreeProof
	if old > tree.N {
		return nil, 0, fmt.Errorf("witness is at size %d, beyond the log's %d: a fork or a rollback", old, tree.N)
	}
	if old > 0 && old < tree.N {
		var err error
		if proof, err = tlog.ProveTree(tree.N, old, l.cfg.Store); err != nil {
			return nil, 0, fmt.Errorf("prove consistency %d→%d: %w", old, tree.N, err)
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(w.URL, "/")+"/add-checkpoint",
		bytes.NewReader(AddCheckpointBody(old, proof, signed)))
	if err != nil {
		return nil, 0, err
	}
	c := w.Client
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, 0, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusConflict:
		n, err := ParseWitnessSize(body)
		if err != nil {
			return nil, 0, err
		}
		return nil, n, errWitnessSize
	default:
		return nil, 0, fmt.Errorf("add-checkpoint: %s: %s: %w", resp.Status, bytes.TrimSpace(body), errWitnessRejected)
	}
	// Check the cosignature before adding it to the note.
	withSig := append(bytes.Clone(signed), body...)
	n, err := note.Open(withSig, note.VerifierList(w.Verifier))
	if err != nil || len(n.Sigs) != 1 {
		return nil, 0, fmt.Errorf("invalid cosignature from witness: %v", err)
	}
	return body, 0, nil
}

// ParseWitnessSize parses the body of a witness's 409 reply to
// add-checkpoint (C2SP tlog-witness): the tree size the witness has
// cosigned, in decimal. Surrounding white space is ignored.
func ParseWitnessSize(body []byte) (int64, error) {
	text := strings.TrimSpace(string(body))
	n, err := strconv.ParseInt(text, 10, 64)
	if err != nil || n < 0 || strconv.FormatInt(n, 10) != text {
		return 0, fmt.Errorf("invalid 409 body %q from the witness: want its tree size in decimal", body)
	}
	return n, nil
}
