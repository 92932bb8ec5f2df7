package testbed

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// EnvBinDir names the folder with the control-plane binaries. The Makefile
// sets it after building them; without it FindBinaries asks the build
// script for its cache folder.
const EnvBinDir = "MAZU_K8S_BIN"

// ErrNoBinaries means the control-plane binaries have not been built.
var ErrNoBinaries = errors.New("testbed binaries not built")

// FindBinaries returns the folder with etcd, kube-apiserver and
// kube-controller-manager. It builds nothing.
func FindBinaries() (string, error) {
	dir := os.Getenv(EnvBinDir)
	if dir == "" {
		root, err := repoRoot()
		if err != nil {
			return "", err
		}
		out, err := exec.Command(filepath.Join(root, ".ci", "k8s", "build.sh"), "dir").Output()
		if err != nil {
			return "", fmt.Errorf("find testbed binaries: run .ci/k8s/build.sh dir: %w", err)
		}
		dir = string(bytes.TrimSpace(out))
	}
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return "", fmt.Errorf("%w: %s is missing from %s; build them with `make testbed-bins` (a cold build took about 22 minutes on a 2-core VM)", ErrNoBinaries, name, dir)
		}
	}
	return dir, nil
}

// repoRoot finds the repository by walking up from the working folder to
// the folder holding .ci/k8s.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repository root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, ".ci", "k8s", "build.sh")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir || strings.TrimSpace(parent) == "" {
			return "", fmt.Errorf("find repository root: no .ci/k8s/build.sh above the working folder; set %s to the binaries' folder", EnvBinDir)
		}
		dir = parent
	}
}
