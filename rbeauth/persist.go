package rbeauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/mazu-mesh/mazu-ztunnel/curator"
)

// savedIdentity is a pod's identity as Workloads keeps it on disk, so that
// an agent that restarts, or the new agent of a rolling update, takes over
// the pod's registration instead of registering again. Without it every
// restart would append a registration per pod and leave the old ones, and
// their slots, in the log for good.
type savedIdentity struct {
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	UID       types.UID `json:"uid"`
	IP        string    `json:"ip"`
	Token     string    `json:"token"`
	Issued    time.Time `json:"issued"`
	Expiry    time.Time `json:"expiry"`
	// Key is the TLS key in PKCS #8 DER.
	Key   []byte     `json:"key"`
	ID    curator.ID `json:"id"`
	Index uint64     `json:"index"`
	Block uint32     `json:"block"`
	Slot  uint32     `json:"slot"`
	// PoPMessages are the messages the agent signed for the ID's entries,
	// which the log monitor must expect again.
	PoPMessages [][]byte `json:"pop_messages"`
}

func (w *Workloads) identityFile(uid types.UID) string {
	return filepath.Join(w.opts.StateDir, string(uid)+".json")
}

// save writes wl's identity to the state folder, readable by root only,
// because it holds the pod's TLS key and token.
func (w *Workloads) save(wl *workload) error {
	if w.opts.StateDir == "" {
		return nil
	}
	if err := w.writeSaved(wl); err != nil {
		return fmt.Errorf("save the identity of %s/%s: %w", wl.namespace, wl.name, err)
	}
	return nil
}

// writeSaved writes the file for save, through a temporary file so that a
// crash never leaves half an identity.
func (w *Workloads) writeSaved(wl *workload) error {
	wl.mu.Lock()
	key, err := x509.MarshalPKCS8PrivateKey(wl.key)
	s := savedIdentity{
		Namespace: wl.namespace, Name: wl.name, UID: wl.uid, IP: wl.ip.String(),
		Token: wl.token, Issued: wl.issued, Expiry: wl.expiry, Key: key,
		ID: wl.id, Index: wl.index, Block: wl.block, Slot: wl.slot, PoPMessages: wl.pops,
	}
	wl.mu.Unlock()
	if err != nil {
		return err
	}
	b, err := json.Marshal(&s)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(w.opts.StateDir, 0o700); err != nil {
		return err
	}
	tmp := w.identityFile(wl.uid) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, w.identityFile(wl.uid))
}

// restore takes over wl's identity from the state folder and reports
// whether it did. The identity must be saved for the same pod and IP, its
// token must have more than a fifth of its lifetime left, and the log must
// still name its entry as the ID's current one. A saved identity that is
// still current but fails another check is revoked, because nothing else
// holds its key.
func (w *Workloads) restore(ctx context.Context, wl *workload) (bool, error) {
	if w.opts.StateDir == "" {
		return false, nil
	}
	s, ecKey, spki, err := w.loadSaved(wl.uid)
	if s == nil || err != nil {
		return false, err
	}
	ip, _ := netip.ParseAddr(s.IP)
	lifetime := s.Expiry.Sub(s.Issued)
	usable := s.UID == wl.uid && ip == wl.ip && time.Until(s.Expiry) > lifetime/5

	resp, err := w.opts.Curator.Updates(ctx, 0, []curator.ID{s.ID})
	if err != nil {
		return false, fmt.Errorf("check the saved identity of %s/%s: %w", wl.namespace, wl.name, err)
	}
	updates, err := curator.VerifyUpdates(resp, w.opts.Policy, nil, []curator.ID{s.ID}, time.Now())
	if err != nil {
		return false, fmt.Errorf("check the saved identity of %s/%s: %w", wl.namespace, wl.name, err)
	}
	v := updates.IDs[s.ID]
	current := v != nil && v.Current != nil && v.Index == s.Index && v.Current.Kind != curator.KindRevocation
	if !current {
		return false, nil
	}
	if w.opts.Expect != nil {
		for _, m := range s.PoPMessages {
			w.opts.Expect(s.ID, m)
		}
	}
	if !usable {
		// The pod is gone or its token is about to expire: give up the
		// registration, since no other agent holds its key.
		if _, err := w.revoke(ctx, wl, s.ID, s.Index, s.Block, s.Slot, ecKey, spki); err != nil {
			return false, fmt.Errorf("revoke the saved registration of %s/%s: %w", wl.namespace, wl.name, err)
		}
		return false, nil
	}
	der, err := NewCertificate(ecKey, wl.identity, s.Token, s.Expiry)
	if err != nil {
		return false, err
	}
	wl.mu.Lock()
	wl.key, wl.spki, wl.token, wl.issued, wl.expiry = ecKey, spki, s.Token, s.Issued, s.Expiry
	wl.id, wl.index, wl.block, wl.slot, wl.certDER, wl.pops = s.ID, s.Index, s.Block, s.Slot, der, s.PoPMessages
	wl.stapledAt = 0
	wl.mu.Unlock()
	if err := w.restaple(ctx, wl); err != nil {
		return false, err
	}
	w.log.Info("workload identity restored", "pod", wl.namespace+"/"+wl.name, "index", s.Index)
	return true, nil
}

// loadSaved reads the pod's saved identity and its TLS key. It returns a
// nil identity and no error when none was saved.
func (w *Workloads) loadSaved(uid types.UID) (*savedIdentity, *ecdsa.PrivateKey, []byte, error) {
	b, err := os.ReadFile(w.identityFile(uid))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil, nil
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read the saved identity of pod %s: %w", uid, err)
	}
	var s savedIdentity
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, nil, nil, fmt.Errorf("read the saved identity of pod %s: %w", uid, err)
	}
	anyKey, err := x509.ParsePKCS8PrivateKey(s.Key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read the saved identity of pod %s: %w", uid, err)
	}
	key, ok := anyKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, nil, fmt.Errorf("read the saved identity of pod %s: the key is %T, want ECDSA", uid, anyKey)
	}
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read the saved identity of pod %s: %w", uid, err)
	}
	return &s, key, spki, nil
}

// revokeSaved revokes the registration saved for a pod that this agent
// does not hold, such as a pod deleted while no agent ran, and deletes the
// file. A revocation the log refuses because the entry is no longer
// current is not an error.
func (w *Workloads) revokeSaved(ctx context.Context, uid types.UID) error {
	s, key, spki, err := w.loadSaved(uid)
	if s == nil || err != nil {
		return err
	}
	ip, _ := netip.ParseAddr(s.IP)
	wl := &workload{namespace: s.Namespace, name: s.Name, uid: uid, ip: ip}
	var httpErr *curator.HTTPError
	if _, err := w.revoke(ctx, wl, s.ID, s.Index, s.Block, s.Slot, key, spki); err != nil && !(errors.As(err, &httpErr) && httpErr.Code == http.StatusConflict) {
		return fmt.Errorf("revoke the saved registration of %s/%s: %w", s.Namespace, s.Name, err)
	}
	w.removeSaved(uid)
	return nil
}

// removeSaved deletes the pod's saved identity, if any.
func (w *Workloads) removeSaved(uid types.UID) {
	if w.opts.StateDir == "" {
		return
	}
	if err := os.Remove(w.identityFile(uid)); err != nil && !errors.Is(err, os.ErrNotExist) {
		w.log.Warn("saved identity not removed", "uid", uid, "error", err)
	}
}
