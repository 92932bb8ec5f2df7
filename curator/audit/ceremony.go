package audit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
	"github.com/mazu-mesh/mazu-ztunnel/curator/rbescheme"
)

// A Ceremony is the state of the CRS ceremony in a log, as FollowCeremony
// replays it.
type Ceremony struct {
	// Tree is the witness-cosigned checkpoint that was read.
	Tree tlog.Tree
	// CRS is the encoding after the last contribution, nil before the first.
	CRS []byte
	// Fingerprint identifies CRS (rbe.CRS.Fingerprint).
	Fingerprint [32]byte
	// Contributions counts the verified contributions.
	Contributions int
	// Closed reports whether a registration follows the contributions. The
	// log accepts no contribution after that, so CRS is final.
	Closed bool
}

// ErrNoCeremony means the log holds no ceremony contribution: its curator
// was started with a CRS file, or its ceremony has not begun.
var ErrNoCeremony = errors.New("the log has no CRS ceremony contribution")

// ceremonyChunk is how many entries FollowCeremony reads per request.
const ceremonyChunk = 256

// FollowCeremony reads the log from its first entry, under a checkpoint
// that policy accepts, and checks each ceremony contribution against the
// CRS before it, starting from rbe.NewCeremony. It stops at the first
// registration, rotation or revocation, after which no contribution can
// follow. The result is the CRS that the witnesses also derive, so a node
// can take its CRS from an untrusted curator. It returns ErrNoCeremony when
// the log has no contribution.
func FollowCeremony(ctx context.Context, client *curator.Client, policy *curator.Policy, now time.Time) (*Ceremony, error) {
	note, err := client.Checkpoint(ctx)
	if err != nil {
		return nil, fmt.Errorf("follow the CRS ceremony: fetch checkpoint: %w", err)
	}
	cp, err := policy.Open(note, now)
	if err != nil {
		return nil, fmt.Errorf("follow the CRS ceremony: %w", err)
	}
	c := &Ceremony{Tree: cp.Tree}
	verifier := &rbescheme.Scheme{}
	for start := int64(0); start < cp.Tree.N && !c.Closed; start += ceremonyChunk {
		recs, err := client.Entries(ctx, cp.Tree, start, min(start+ceremonyChunk, cp.Tree.N))
		if err != nil {
			return nil, fmt.Errorf("follow the CRS ceremony: read entries: %w", err)
		}
		for i, data := range recs {
			e, err := curator.ParseEntry(data)
			if err != nil {
				return nil, fmt.Errorf("follow the CRS ceremony: entry %d: %w", start+int64(i), err)
			}
			if e.IsKey() {
				c.Closed = true
				break
			}
			if e.Kind != curator.KindCeremony {
				continue
			}
			next, fp, err := verifier.VerifyContribution(c.CRS, e.Ceremony)
			if err != nil {
				return nil, fmt.Errorf("follow the CRS ceremony: contribution at entry %d is invalid: %w", start+int64(i), err)
			}
			c.CRS, c.Fingerprint = next, fp
			c.Contributions++
		}
	}
	if c.Contributions == 0 {
		return c, ErrNoCeremony
	}
	return c, nil
}
