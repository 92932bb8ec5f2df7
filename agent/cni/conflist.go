package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// PluginType is the "type" of the plugin entry the installer manages, and
// the name of the plugin binary.
const PluginType = "mazu-cni"

// errNoConfig means the configuration folder holds no usable primary
// configuration yet.
var errNoConfig = errors.New("no CNI network configuration found")

// cniConfig is a parsed .conf or .conflist file. Numbers stay json.Number,
// so that rewriting a file does not change them.
type cniConfig map[string]any

func parseConfig(raw []byte) (cniConfig, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var conf cniConfig
	if err := dec.Decode(&conf); err != nil {
		return nil, err
	}
	if conf == nil {
		return nil, errors.New("configuration is null")
	}
	return conf, nil
}

// isList reports whether name is a configuration list file by its
// extension, as libcni decides.
func isList(name string) bool { return strings.HasSuffix(name, ".conflist") }

// validConfig checks the file as the container runtime would before using
// it: a list needs a non-empty "plugins" array, a single configuration a
// "type".
func validConfig(name string, conf cniConfig) error {
	if isList(name) {
		plugins, ok := conf["plugins"].([]any)
		if !ok || len(plugins) == 0 {
			return errors.New(`no "plugins" list or an empty one`)
		}
		return nil
	}
	if t, _ := conf["type"].(string); t == "" {
		return errors.New(`no "type"; a list of plugins belongs in a .conflist file`)
	}
	return nil
}

// findPrimaryConfig returns the name of the file the container runtime uses:
// the first *.conf or *.conflist in dir, sorted by name, that parses and
// is valid, as libcni and istio-cni pick it. skipped lists the files it
// passed over and why.
func findPrimaryConfig(dir string) (name string, skipped []string, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", nil, fmt.Errorf("list CNI configurations: %w", err)
	}
	var names []string
	for _, e := range entries {
		ext := filepath.Ext(e.Name())
		if !e.IsDir() && (ext == ".conf" || ext == ".conflist") {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	for _, n := range names {
		raw, err := os.ReadFile(filepath.Join(dir, n))
		if err == nil {
			var conf cniConfig
			if conf, err = parseConfig(raw); err == nil {
				err = validConfig(n, conf)
			}
		}
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("%s: %v", n, err))
			continue
		}
		return n, skipped, nil
	}
	return "", skipped, errNoConfig
}

// resolveNamedConfig returns the file to use when CNI_CONF_NAME names one.
// Like istio-cni it accepts the other extension, because installing
// mazu-cni into a .conf renames it to .conflist.
func resolveNamedConfig(dir, name string) (string, error) {
	candidates := []string{name}
	if strings.HasSuffix(name, ".conf") {
		candidates = append(candidates, name+"list")
	} else {
		candidates = append(candidates, strings.TrimSuffix(name, "list"))
	}
	for _, c := range candidates {
		if _, err := os.Stat(filepath.Join(dir, c)); err == nil {
			return c, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("stat CNI configuration %s: %w", c, err)
		}
	}
	return "", errNoConfig
}

// validateConfName checks a CNI_CONF_NAME value.
func validateConfName(name string) error {
	if name == "" {
		return nil
	}
	if strings.ContainsRune(name, '/') || name == "." || name == ".." || strings.HasPrefix(name, ".") {
		return fmt.Errorf("invalid CNI_CONF_NAME %q: want the name of a file in CNI_CONF_DIR, without a folder", name)
	}
	if ext := filepath.Ext(name); ext != ".conf" && ext != ".conflist" {
		return fmt.Errorf("invalid CNI_CONF_NAME %q: the container runtime reads only .conf and .conflist files; name one of those, or leave it empty to use the first file in CNI_CONF_DIR", name)
	}
	return nil
}

// asList returns the configuration as a list. A single configuration
// becomes the list's only plugin, and the list keeps its name and
// cniVersion, so the runtime's cached results for running pods still
// match the network name.
func asList(fileName string, conf cniConfig) cniConfig {
	if isList(fileName) {
		return conf
	}
	name, _ := conf["name"].(string)
	if name == "" {
		name = strings.TrimSuffix(fileName, filepath.Ext(fileName))
	}
	list := cniConfig{"name": name, "plugins": []any{map[string]any(conf)}}
	if v, ok := conf["cniVersion"]; ok {
		list["cniVersion"] = v
	}
	return list
}

// findEntries returns the indexes of the mazu-cni entries in a list.
func findEntries(list cniConfig) ([]int, error) {
	plugins, ok := list["plugins"].([]any)
	if !ok {
		return nil, errors.New(`configuration list has no "plugins" array`)
	}
	var found []int
	for i, p := range plugins {
		plugin, ok := p.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("plugin %d of the configuration list is not an object", i)
		}
		if plugin["type"] == PluginType {
			found = append(found, i)
		}
	}
	return found, nil
}

// withoutEntries returns a copy of the list without mazu-cni entries.
func withoutEntries(list cniConfig) (cniConfig, error) {
	found, err := findEntries(list)
	if err != nil {
		return nil, err
	}
	out := maps.Clone(list)
	var plugins []any
	for i, p := range list["plugins"].([]any) {
		if !slices.Contains(found, i) {
			plugins = append(plugins, p)
		}
	}
	out["plugins"] = plugins
	return out, nil
}

// withEntry returns a copy of the list with entry as its only mazu-cni
// plugin, at the end of the chain so that it runs after the plugins that
// set up the pod's interfaces.
func withEntry(list cniConfig, entry map[string]any) (cniConfig, error) {
	out, err := withoutEntries(list)
	if err != nil {
		return nil, err
	}
	out["plugins"] = append(out["plugins"].([]any), entry)
	return out, nil
}

// currentEntry returns the list's only mazu-cni entry, or nil when it has
// none or more than one.
func currentEntry(list cniConfig) (map[string]any, error) {
	found, err := findEntries(list)
	if err != nil || len(found) != 1 {
		return nil, err
	}
	return list["plugins"].([]any)[found[0]].(map[string]any), nil
}

// sameJSON reports whether two values encode to the same JSON. Maps encode
// with sorted keys, so key order and formatting do not count.
func sameJSON(a, b any) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(ja, jb)
}

func encodeConfig(conf cniConfig) ([]byte, error) {
	out, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode CNI configuration: %w", err)
	}
	return append(out, '\n'), nil
}

// writeFileAtomic writes data to a temporary file in the same folder and
// renames it over path, so that readers see the old or the new content,
// never a part. The temporary name starts with a dot and ends in .tmp, so
// a container runtime reading the folder skips it.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+"-*.tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
