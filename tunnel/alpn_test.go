package tunnel

import (
	"slices"
	"testing"
)

func TestHBONEProtocols(t *testing.T) {
	tests := []struct {
		name    string
		offered []string
		want    []string
	}{
		{"none given", nil, []string{"h2"}},
		{"h2 only", []string{"h2"}, []string{"h2"}},
		{"mazu first", []string{ALPNMazuRBE, "h2"}, []string{ALPNMazuRBE, "h2"}},
		{"mazu only", []string{ALPNMazuRBE}, []string{ALPNMazuRBE}},
		{"non-HTTP/2 value", []string{"http/1.1", "h2"}, []string{"h2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := hboneProtocols(tt.offered); !slices.Equal(got, tt.want) {
				t.Errorf("hboneProtocols(%v) = %v, want %v", tt.offered, got, tt.want)
			}
		})
	}
}
