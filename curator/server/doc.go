// Package server is the curator: it checks registration requests (the
// pod-bound token through the Kubernetes TokenReview API, the RBE helper
// values, the proof of possession and the uniqueness of the ID),
// sequences them into batches, appends each batch and its state entry to
// the log (fsynced, or committed through raft), requests cosignatures of
// the new checkpoint from the witnesses, and replies once the entry is
// durable.
//
// It also serves the read side: the checkpoint, C2SP tlog-tiles tiles and
// entry bundles, proof bundles, node-agent updates, and the token
// signatures that only witnesses may fetch. Handler lists the endpoints.
//
// Requests and the agent's updates are JSON: they are small, few per pod,
// and easy to inspect and evolve. What clients verify (entries, tiles,
// checkpoints, bundles) keeps its canonical binary or signed-note form,
// carried as base64 inside the JSON where needed, so nothing is re-encoded
// before it is checked.
package server
