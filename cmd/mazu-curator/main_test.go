package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/mazu-mesh/mazu-ztunnel/curator/raftlog"
)

func TestParsePeers(t *testing.T) {
	got, err := parsePeers("10.0.0.1:7000,10.0.0.2:7000", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	want := []raftlog.Peer{{ID: "10.0.0.1:7000", RaftAddr: "10.0.0.1:7000", APIURL: "http://10.0.0.1:8080"},
		{ID: "10.0.0.2:7000", RaftAddr: "10.0.0.2:7000", APIURL: "http://10.0.0.2:8080"}}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("parsePeers = %+v, want %+v", got, want)
	}
	got, err = parsePeers("r1=127.0.0.1:7000=http://127.0.0.1:8000", "127.0.0.1:0")
	if err != nil || got[0].APIURL != "http://127.0.0.1:8000" {
		t.Fatalf("parsePeers(full form) = %+v, %v", got, err)
	}
	if _, err := parsePeers("10.0.0.1:7000", "127.0.0.1:0"); err == nil {
		t.Error("parsePeers with a dynamic API port succeeded")
	}
}

func TestRunRejectsBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, "unknown subcommand"},
		{[]string{"keygen", "-kind", "other", "-name", "x", "-out", t.TempDir() + "/k"}, "invalid -kind"},
		{[]string{"serve", "-db", "", "-key", "", "-crs", ""}, "serve needs"},
		{[]string{"witness", "-key", "", "-curator", ""}, "witness needs"},
		{[]string{"audit"}, "audit needs"},
		{[]string{"ceremony", "finalize"}, "unknown ceremony subcommand"},
		{[]string{"ceremony", "status"}, "ceremony status needs -url, and -log-key or -policy"},
		{[]string{"ceremony", "contribute", "-url", "http://127.0.0.1:1", "-log-key", "x"}, "needs -token-file"},
		{[]string{"ceremony", "verify", "-url", "http://127.0.0.1:1"}, "ceremony verify needs -url, and -log-key or -policy"},
		{[]string{"ceremony", "verify", "-url", "http://127.0.0.1:1", "-policy", "p", "-log-key", "k"}, "-policy replaces -log-key"},
	} {
		var out, errOut bytes.Buffer
		err := run(context.Background(), tc.args, &out, &errOut)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run(%q) = %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}
