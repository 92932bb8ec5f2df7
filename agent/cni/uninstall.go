package cni

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// podCheckTimeout bounds the API request the installer makes on SIGTERM.
const podCheckTimeout = 5 * time.Second

// stop runs when the installer receives SIGTERM or SIGINT. It uninstalls the plugin
// only when no other installer on the node is running and the installer's
// pod is being deleted (an update, a node leaving the DaemonSet or `helm
// uninstall`). When the pod stays, as on a node shutdown, the plugin stays
// too: pods created before the agent is back then wait for it instead of
// starting uncaptured.
func (in *Installer) stop() error {
	if err := os.Remove(in.leasePath(in.cfg.PodUID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		in.log.Warn("own lease not removed", "error", err)
	}
	others, err := in.liveLeases()
	if err != nil {
		in.log.Error("installer leases unreadable; leaving mazu-cni installed", "error", err)
		return nil
	}
	if len(others) > 0 {
		// The other installer repairs an entry that names the removed
		// kubeconfig on its next poll.
		if err := os.Remove(filepath.Join(in.stateDir, in.kubeconfigName())); err != nil && !errors.Is(err, os.ErrNotExist) {
			in.log.Warn("own kubeconfig not removed", "error", err)
		}
		in.log.Info("another mazu-cni installer runs on this node; leaving mazu-cni installed", "leases", others)
		return nil
	}
	if stays, reason := in.podStays(); stays {
		in.log.Info("leaving mazu-cni installed", "reason", reason, "pod", in.cfg.PodNamespace+"/"+in.cfg.PodName)
		return nil
	}
	return in.uninstall()
}

// podStays checks whether the installer's pod stays, that is, is not being
// deleted. Without a token or pod name it returns false, so an installer
// run by hand uninstalls on SIGTERM. An API error returns true, because the
// plugin fails closed, and the error log explains the manual removal.
func (in *Installer) podStays() (bool, string) {
	if !in.kubeconfig || in.cfg.PodName == "" || in.cfg.PodNamespace == "" {
		return false, ""
	}
	client, err := in.inClusterClient()
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), podCheckTimeout)
		defer cancel()
		var pod apiObject
		pod, err = client.getPod(ctx, in.cfg.PodNamespace, in.cfg.PodName)
		switch {
		case errors.Is(err, errNotFound):
			return false, ""
		case err != nil:
		case pod.Metadata.UID != in.cfg.PodUID || pod.Metadata.DeletionTimestamp != nil:
			return false, ""
		default:
			return true, "the installer's pod is not being deleted (node shutdown or container restart)"
		}
	}
	in.log.Error("cannot check whether the installer's pod is being deleted; leaving mazu-cni installed. "+
		"If the chart was uninstalled, remove the mazu-cni entry from the CNI configuration, the mazu-cni binary and the mazu-cni.d folder by hand",
		"error", err, "confDir", in.cfg.HostConfDir)
	return true, "the installer's pod could not be checked"
}

func (in *Installer) inClusterClient() (*apiClient, error) {
	token, err := os.ReadFile(filepath.Join(in.cfg.ServiceAccountDir, "token"))
	if err != nil {
		return nil, fmt.Errorf("read service-account token: %w", err)
	}
	ca, err := os.ReadFile(filepath.Join(in.cfg.ServiceAccountDir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("read API server CA bundle: %w", err)
	}
	return newAPIClient(in.cfg.APIServer, ca, strings.TrimSpace(string(token)))
}

// uninstall removes the plugin entry from every configuration file that
// has one, the binary and the state folder.
func (in *Installer) uninstall() error {
	entries, err := os.ReadDir(in.cfg.ConfDir)
	if err != nil {
		return fmt.Errorf("uninstall mazu-cni: list CNI configurations: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if e.IsDir() || !isList(e.Name()) {
			continue
		}
		if err := in.removeEntry(e.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	bin := filepath.Join(in.cfg.BinDir, PluginType)
	if err := os.Remove(bin); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("uninstall mazu-cni: remove binary: %w", err))
	}
	if len(errs) == 0 {
		// Keep the saved originals while an entry could not be removed.
		if err := os.RemoveAll(in.stateDir); err != nil {
			errs = append(errs, fmt.Errorf("uninstall mazu-cni: remove state folder: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	in.log.Info("uninstalled mazu-cni", "binary", bin, "confDir", in.cfg.ConfDir)
	return nil
}

// removeEntry removes the mazu-cni entries from one configuration list.
// When the rest equals the saved original, it writes back the original's
// exact bytes, under the .conf name if the original was a .conf. When
// another component changed the file since, it writes the rest.
func (in *Installer) removeEntry(name string) error {
	path := filepath.Join(in.cfg.ConfDir, name)
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("uninstall mazu-cni: read %s: %w", name, err)
	}
	list, err := parseConfig(raw)
	if err != nil {
		// Not ours to fix; the runtime skips it as well.
		return nil
	}
	found, err := findEntries(list)
	if err != nil || len(found) == 0 {
		return nil
	}
	rest, err := withoutEntries(list)
	if err != nil {
		return fmt.Errorf("uninstall mazu-cni: %s: %w", name, err)
	}
	mode := os.FileMode(0o644)
	if info, err := os.Stat(path); err == nil {
		mode = info.Mode().Perm()
	}

	single := strings.TrimSuffix(name, "list")
	for _, original := range []string{name, single} {
		saved, err := os.ReadFile(filepath.Join(in.stateDir, "original", original))
		if err != nil {
			continue
		}
		conf, err := parseConfig(saved)
		if err != nil || !sameJSON(asList(original, conf), rest) {
			continue
		}
		if err := writeFileAtomic(filepath.Join(in.cfg.ConfDir, original), saved, mode); err != nil {
			return fmt.Errorf("uninstall mazu-cni: restore %s: %w", original, err)
		}
		if original != name {
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("uninstall mazu-cni: remove %s after restoring %s: %w", name, original, err)
			}
		}
		in.log.Info("restored the original CNI configuration", "file", original)
		return nil
	}
	data, err := encodeConfig(rest)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(path, data, mode); err != nil {
		return fmt.Errorf("uninstall mazu-cni: %w", err)
	}
	in.log.Info("removed mazu-cni from a CNI configuration changed since the install", "file", name)
	return nil
}
