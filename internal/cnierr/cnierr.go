// Package cnierr gives berth's errors their CNI error codes.
//
// Code that fails wraps one of the sentinel kinds below with %w and a
// message a person can act on; the plugin entry point turns the chain into
// a *types.Error with To. Nothing matches errors by their text.
package cnierr

import (
	"errors"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
)

// Kinds of failure, each with its CNI error code. The codes below 100 are
// the spec's; 100 and up are berth's own.
var (
	ErrIncompatibleVersion = &Kind{types.ErrIncompatibleCNIVersion, "incompatible CNI version"}
	ErrUnsupportedField    = &Kind{types.ErrUnsupportedField, "unsupported field"}
	ErrUnknownContainer    = &Kind{types.ErrUnknownContainer, "unknown container"}
	ErrInvalidEnv          = &Kind{types.ErrInvalidEnvironmentVariables, "invalid environment variables"}
	ErrIO                  = &Kind{types.ErrIOFailure, "I/O failure"}
	ErrDecode              = &Kind{types.ErrDecodingFailure, "failed to decode content"}
	ErrInvalidConfig       = &Kind{types.ErrInvalidNetworkConfig, "invalid network config"}
	ErrTryAgainLater       = &Kind{types.ErrTryAgainLater, "try again later"}
	ErrUnavailable         = &Kind{types.ErrPluginNotAvailable, "plugin not available"}

	// ErrAddressExhausted: no free address left in the configured ranges.
	ErrAddressExhausted = &Kind{100, "address range exhausted"}
	// ErrAddressInUse: a requested address belongs to another attachment.
	ErrAddressInUse = &Kind{101, "requested address in use"}
	// ErrPortInUse: a host port is already published by another container.
	ErrPortInUse = &Kind{102, "host port already published"}
	// ErrLinkInUse: a link berth must create exists and is not berth's,
	// or a bridge is already used by another network.
	ErrLinkInUse = &Kind{103, "interface in use"}
	// ErrCheckFailed: CHECK found the attachment differs from what ADD made.
	ErrCheckFailed = &Kind{104, "attachment does not match"}
	// ErrDatapath: the kernel refused a change (netlink, iptables, sysctl).
	ErrDatapath = &Kind{105, "datapath setup failed"}
)

// Kind is a class of failure with its CNI error code.
type Kind struct {
	Code uint
	Msg  string
}

func (k *Kind) Error() string { return k.Msg }

// Code is the CNI code of err: that of the first Kind or *types.Error in
// its chain, or ErrInternal when none is there.
func Code(err error) uint {
	if err == nil {
		return 0
	}
	return To(err).Code
}

// To converts err to the CNI error a plugin prints. The message is the
// kind (so a runtime can log it compactly) and the details are the rest of
// the chain, which names the field or object and the fix. Runtimes print
// both ("msg; details"), so the kind, which the chain renders where it was
// wrapped ("invalid network config: mtu: ..."), is left out of details.
func To(err error) *types.Error {
	if err == nil {
		return nil
	}
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	var k *Kind
	if errors.As(err, &k) {
		return types.NewError(k.Code, k.Msg, strings.Replace(err.Error(), k.Msg+": ", "", 1))
	}
	return types.NewError(types.ErrInternal, "internal error", err.Error())
}
