package bridge

// AttachedContainers lists the IDs of the containers attached to network
// on this node, from the plugins' records in stateDir: what a node must
// DEL before berth can be uninstalled from it.
func AttachedContainers(stateDir, network string) ([]string, error) {
	recs, err := records(stateDir, network)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(recs))
	for _, r := range recs {
		ids = append(ids, r.ContainerID)
	}
	return ids, nil
}

// Alias is the alias (IFLA_IFALIAS) berth gives the bridge of network.
func Alias(network string) string { return aliasPrefix + network }
