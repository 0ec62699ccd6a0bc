package attach

import (
	"fmt"

	"github.com/berthnet/berth/conf"
	"github.com/berthnet/berth/internal/cnierr"
	"github.com/berthnet/berth/internal/shaping"
)

// The bandwidth capability: internal/shaping does the tc work on the
// attachment's host veth, with an ifb device named after the attachment
// (like the host veth, so that DEL finds it without state).

func ifbName(key string) string { return "bw" + key[:11] }

// shape limits the attachment's traffic as b asks; nil b does nothing.
func (k *call) shape(b *conf.Bandwidth) error {
	if b == nil {
		return nil
	}
	if err := shaping.Apply(k.rec.HostVeth, ifbName(k.rec.key()), b); err != nil {
		return fmt.Errorf("%w: bandwidth: %v", cnierr.ErrDatapath, err)
	}
	return nil
}

// unshape removes what shape made outside the veth (its ifb device).
func (k *call) unshape() error {
	if err := shaping.Remove(ifbName(k.rec.key())); err != nil {
		return fmt.Errorf("%w: bandwidth: %v", cnierr.ErrDatapath, err)
	}
	return nil
}

func (k *call) checkShaping(b *conf.Bandwidth) error {
	if b == nil {
		return nil
	}
	if err := shaping.Check(k.rec.HostVeth, ifbName(k.rec.key()), b); err != nil {
		return fmt.Errorf("%w: bandwidth: %v", cnierr.ErrCheckFailed, err)
	}
	return nil
}
