package attach_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/berthnet/berth/internal/testenv"
)

// IPv6 addressing berth-bridge cannot protect or cannot configure is
// refused at ADD with code 7 naming the field as the config spells it,
// and leaves nothing behind. Before, a second IPv6 range set was
// accepted, and its addresses escaped isolation, masquerade and the
// forward rules (only the first subnet of a family had rules): a
// container of an isolated network pinged another isolated network from
// its second address. Addresses no rule could serve and the legacy
// single-range form are refused the same way.
func TestIPv6AddressingRefusedWithTheField(t *testing.T) {
	n := newDualNode(t)
	before := n.snapshot(t)
	for i, tt := range []struct {
		name, ipam, field string
		// legacy: berth never took it (a parse error), so DEL and GC
		// may refuse it too; the others an older berth attached with.
		legacy bool
	}{
		{"a second IPv6 range set", `"ranges":[[{"subnet":"fd00:140::/64"}],[{"subnet":"fd00:141::/64"}]]`, "ipam.ranges[1]", false},
		{"a second IPv4 range set on a dual-stack network", `"ranges":[[{"subnet":"10.140.0.0/24"}],[{"subnet":"fd00:140::/64"}],[{"subnet":"10.141.0.0/24"}]]`, "ipam.ranges[2]", false},
		{"another IPv6 subnet in a range set", `"ranges":[[{"subnet":"10.140.0.0/24"}],[{"subnet":"fd00:140::/64"},{"subnet":"fd00:141::/64"}]]`, "ipam.ranges[1][1].subnet", false},
		// Addresses the kernel will not route or assign: these failed
		// half-way with code 105, or (link-local) gave containers
		// addresses no rule or route could serve.
		{"an IPv4-mapped IPv6 subnet", `"ranges":[[{"subnet":"::ffff:10.142.0.0/120"}]]`, "ipam.ranges[0][0].subnet", false},
		{"an IPv6 link-local subnet", `"ranges":[[{"subnet":"10.140.0.0/24"}],[{"subnet":"fe80::/64"}]]`, "ipam.ranges[1][0].subnet", false},
		{"an IPv6 multicast subnet", `"ranges":[[{"subnet":"ff05::/64"}]]`, "ipam.ranges[0][0].subnet", false},
		// The legacy single range is named as written, not as ranges[0][0].
		{"legacy form: gateway outside the IPv6 subnet", `"subnet":"fd00:143::/64","gateway":"fd00:144::1"`, "ipam.gateway", true},
		{"legacy form: rangeStart outside the IPv6 subnet", `"subnet":"fd00:143::/64","rangeStart":"fd00:144::1"`, "ipam.rangeStart", true},
		{"legacy form: malformed IPv6 subnet", `"subnet":"fd00:143::/129"`, "ipam.subnet", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			conflist := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"cfg6-%d","plugins":[{"type":"berth-bridge","bridge":"berth-cfg%d",
				"isDefaultGateway":true,"stateDir":%q,"ipam":{"type":"berth-ipam","dataDir":%q,%s}}]}`, i, i, n.stateDir, n.dataDir, tt.ipam)
			rt := testenv.NewRuntime(t, n.ns, conflist)
			c := container(t, fmt.Sprintf("cfg%d", i))
			_, err := rt.Add(c)
			var ce *types.Error
			if !errors.As(err, &ce) || ce.Code != 7 || !strings.HasPrefix(ce.Details, tt.field+":") {
				t.Errorf("ADD: %v, want code 7 naming %s", err, tt.field)
			}
			if err := rt.Del(c); err != nil && !tt.legacy {
				t.Errorf("DEL: %v", err)
			}
			if err := rt.GC(); err != nil && !tt.legacy {
				t.Errorf("GC: %v", err)
			}
			if after := n.snapshot(t); after != before {
				t.Errorf("a refused ADD left:\n%s", testenv.Diff(before, after))
			}
		})
	}
}
