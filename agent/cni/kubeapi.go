package cni

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"
)

// kubeconfig is the subset of a kubeconfig file that the installer writes
// for the plugin. The installer writes it as JSON, which kubectl also reads,
// so the plugin needs neither a YAML parser nor client-go.
type kubeconfig struct {
	APIVersion     string         `json:"apiVersion"`
	Kind           string         `json:"kind"`
	Clusters       []namedCluster `json:"clusters"`
	Users          []namedUser    `json:"users"`
	Contexts       []namedContext `json:"contexts"`
	CurrentContext string         `json:"current-context"`
}

type namedCluster struct {
	Name    string      `json:"name"`
	Cluster kubeCluster `json:"cluster"`
}

type kubeCluster struct {
	Server string `json:"server"`
	// CertificateAuthorityData is the PEM bundle. encoding/json writes a
	// []byte as base64, which is the kubeconfig encoding of this field.
	CertificateAuthorityData []byte `json:"certificate-authority-data,omitempty"`
}

type namedUser struct {
	Name string   `json:"name"`
	User kubeUser `json:"user"`
}

type kubeUser struct {
	Token string `json:"token,omitempty"`
}

type namedContext struct {
	Name    string      `json:"name"`
	Context kubeContext `json:"context"`
}

type kubeContext struct {
	Cluster string `json:"cluster"`
	User    string `json:"user"`
}

// newKubeconfig returns a kubeconfig with one cluster, user and context.
func newKubeconfig(server string, caPEM []byte, token string) kubeconfig {
	return kubeconfig{
		APIVersion:     "v1",
		Kind:           "Config",
		Clusters:       []namedCluster{{Name: "local", Cluster: kubeCluster{Server: server, CertificateAuthorityData: caPEM}}},
		Users:          []namedUser{{Name: "mazu-cni", User: kubeUser{Token: token}}},
		Contexts:       []namedContext{{Name: "mazu-cni", Context: kubeContext{Cluster: "local", User: "mazu-cni"}}},
		CurrentContext: "mazu-cni",
	}
}

// loadKubeconfig reads a JSON kubeconfig and returns a client for its
// current context.
func loadKubeconfig(path string) (*apiClient, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read kubeconfig: %w", err)
	}
	var kc kubeconfig
	if err := json.Unmarshal(raw, &kc); err != nil {
		return nil, fmt.Errorf("decode kubeconfig %s (mazu-cni reads only the JSON form the installer writes): %w", path, err)
	}

	var ctx *kubeContext
	for i := range kc.Contexts {
		if kc.Contexts[i].Name == kc.CurrentContext {
			ctx = &kc.Contexts[i].Context
		}
	}
	if ctx == nil {
		return nil, fmt.Errorf("kubeconfig %s: current context %q not found", path, kc.CurrentContext)
	}

	var cluster *kubeCluster
	for i := range kc.Clusters {
		if kc.Clusters[i].Name == ctx.Cluster {
			cluster = &kc.Clusters[i].Cluster
		}
	}
	if cluster == nil {
		return nil, fmt.Errorf("kubeconfig %s: cluster %q not found", path, ctx.Cluster)
	}

	var user kubeUser
	for _, u := range kc.Users {
		if u.Name == ctx.User {
			user = u.User
		}
	}
	return newAPIClient(cluster.Server, cluster.CertificateAuthorityData, user.Token)
}

// apiClient reads single objects from the Kubernetes API with a bearer token.
type apiClient struct {
	server string
	token  string
	http   *http.Client
}

func newAPIClient(server string, caPEM []byte, token string) (*apiClient, error) {
	if _, err := url.Parse(server); err != nil || server == "" {
		return nil, fmt.Errorf("invalid API server address %q: want https://host:port", server)
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("invalid API server CA bundle: no PEM certificate found")
		}
		tlsConf.RootCAs = pool
	}
	return &apiClient{
		server: server,
		token:  token,
		http: &http.Client{
			Transport: &http.Transport{TLSClientConfig: tlsConf, Proxy: nil},
			Timeout:   10 * time.Second,
		},
	}, nil
}

// apiObject contains the fields of a pod or namespace that mazu-cni reads.
type apiObject struct {
	Metadata struct {
		Name              string            `json:"name"`
		Namespace         string            `json:"namespace"`
		UID               string            `json:"uid"`
		Labels            map[string]string `json:"labels"`
		Annotations       map[string]string `json:"annotations"`
		DeletionTimestamp *string           `json:"deletionTimestamp"`
	} `json:"metadata"`
	Spec struct {
		HostNetwork bool `json:"hostNetwork"`
	} `json:"spec"`
}

// errNotFound is returned for an object the API server does not have.
var errNotFound = errors.New("not found")

func (c *apiClient) getPod(ctx context.Context, namespace, name string) (apiObject, error) {
	return c.get(ctx, "/api/v1/namespaces/"+url.PathEscape(namespace)+"/pods/"+url.PathEscape(name))
}

func (c *apiClient) getNamespace(ctx context.Context, name string) (apiObject, error) {
	return c.get(ctx, "/api/v1/namespaces/"+url.PathEscape(name))
}

func (c *apiClient) get(ctx context.Context, path string) (apiObject, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.server+path, nil)
	if err != nil {
		return apiObject{}, fmt.Errorf("get %s: %w", path, err)
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}

	resp, err := c.http.Do(req)
	if err != nil {
		return apiObject{}, fmt.Errorf("get %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return apiObject{}, fmt.Errorf("get %s: read response: %w", path, err)
	}

	switch {
	case resp.StatusCode == http.StatusNotFound:
		return apiObject{}, fmt.Errorf("get %s: %w", path, errNotFound)
	case resp.StatusCode != http.StatusOK:
		// The API server's Status body names the reason, for example an
		// expired token or missing RBAC.
		return apiObject{}, fmt.Errorf("get %s: %s: %.300s", path, resp.Status, body)
	}
	var obj apiObject
	if err := json.Unmarshal(body, &obj); err != nil {
		return apiObject{}, fmt.Errorf("get %s: decode response: %w", path, err)
	}
	return obj, nil
}
