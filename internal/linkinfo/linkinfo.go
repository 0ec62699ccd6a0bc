// Package linkinfo reads what vishvananda/netlink leaves out of a link's
// kind-specific settings (a VXLAN device's DF, a bridge's boolean
// options, a bridge port's multicast router type): the kernel's own
// description of the link (RTM_GETLINK), its IFLA_LINKINFO's
// IFLA_INFO_DATA and IFLA_INFO_SLAVE_DATA.
package linkinfo

import (
	"fmt"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Data is the IFLA_INFO_DATA of link index in the calling thread's
// network namespace: each attribute's value by its type (empty for a
// flag that is set). A link without kind-specific data has none.
func Data(index int) (map[uint16][]byte, error) { return nested(index, nl.IFLA_INFO_DATA) }

// SlaveData is the IFLA_INFO_SLAVE_DATA of link index, what its master
// keeps of it (a bridge port's IFLA_BRPORT_* settings), as Data. A link
// without a master has none.
func SlaveData(index int) (map[uint16][]byte, error) { return nested(index, nl.IFLA_INFO_SLAVE_DATA) }

// nested is the attributes nested in link index's IFLA_LINKINFO under
// which.
func nested(index int, which uint16) (map[uint16][]byte, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	req.AddData(msg)
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return nil, fmt.Errorf("RTM_GETLINK of link %d: %w", index, err)
	}
	if len(msgs) != 1 || len(msgs[0]) < unix.SizeofIfInfomsg {
		return nil, fmt.Errorf("RTM_GETLINK of link %d: %d answers", index, len(msgs))
	}
	attrs, err := nl.ParseRouteAttrAsMap(msgs[0][unix.SizeofIfInfomsg:])
	if err != nil {
		return nil, fmt.Errorf("RTM_GETLINK of link %d: %w", index, err)
	}
	info, err := nl.ParseRouteAttrAsMap(attrs[unix.IFLA_LINKINFO].Value)
	if err != nil {
		return nil, fmt.Errorf("link %d's link info: %w", index, err)
	}
	raw, err := nl.ParseRouteAttr(info[which].Value)
	if err != nil {
		return nil, fmt.Errorf("link %d's link info (attribute %d): %w", index, which, err)
	}
	data := make(map[uint16][]byte, len(raw))
	for _, a := range raw {
		data[a.Attr.Type] = a.Value
	}
	return data, nil
}
