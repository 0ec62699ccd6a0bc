package cnierr

import (
	"errors"
	"fmt"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestTo(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		wantCode uint
	}{
		{"config", fmt.Errorf("%w: mtu: 70000 is above 65535", ErrInvalidConfig), types.ErrInvalidNetworkConfig},
		{"wrapped twice", fmt.Errorf("adding: %w", fmt.Errorf("%w: no lease", ErrTryAgainLater)), types.ErrTryAgainLater},
		{"berth code", fmt.Errorf("%w: 8080/tcp by abc", ErrPortInUse), 102},
		{"plain", errors.New("boom"), types.ErrInternal},
		{"cni error passes through", types.NewError(types.ErrUnknownContainer, "x", "y"), types.ErrUnknownContainer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := To(tt.err)
			if got.Code != tt.wantCode {
				t.Fatalf("code %d, want %d", got.Code, tt.wantCode)
			}
			if Code(tt.err) != tt.wantCode {
				t.Fatalf("Code() = %d, want %d", Code(tt.err), tt.wantCode)
			}
			if got.Details == "" && tt.wantCode != types.ErrUnknownContainer {
				t.Fatalf("details lost: %+v", got)
			}
		})
	}
	// Runtimes print msg and details side by side: no word twice.
	got := To(fmt.Errorf("adding: %w", fmt.Errorf("%w: mtu: 70000 is above 65535", ErrInvalidConfig)))
	if got.Msg != "invalid network config" || got.Details != "adding: mtu: 70000 is above 65535" {
		t.Errorf("msg %q, details %q", got.Msg, got.Details)
	}
	if To(nil) != nil {
		t.Fatal("To(nil) must be nil")
	}
}
