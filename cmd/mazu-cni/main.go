// Command mazu-cni is a chained CNI plugin. On ADD it asks the node agent to
// enroll the pod and fails unless the agent acknowledges, so an ambient
// pod's containers start only once its traffic is captured.
package main

import (
	"os"

	"github.com/mazu-mesh/mazu-ztunnel/agent/cni"
)

func main() {
	os.Exit(cni.RunPlugin(os.Getenv, os.Stdin, os.Stdout))
}
