package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sigil-net/sigil/agent"
	"github.com/sigil-net/sigil/agent/apitypes"
	"github.com/sigil-net/sigil/datapath"
)

// BPFLBService is one service of the socket load-balancer's maps.
type BPFLBService struct {
	apitypes.Service
	RevNATIndex uint16   `json:"revNATIndex"`
	BackendIDs  []uint32 `json:"backendIDs"`
}

func newBPFLBCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "lb", Short: "The socket-level service load-balancer's maps (frontends -> backends)"}
	cmd.AddCommand(&cobra.Command{
		Use:     "list",
		Short:   "List the service frontends, backends (with their IDs) and affinity in the pinned maps",
		Example: "  sigil bpf lb list\n  sigil bpf lb list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := readLB(o.pinDir)
			if err != nil {
				return err
			}
			return o.render(cmd.OutOrStdout(), res, func(w io.Writer) error {
				fmt.Fprintln(w, "FRONTEND\tBACKENDS\tAFFINITY\tREVNAT\tBACKEND IDS")
				for _, s := range res {
					ids := make([]string, len(s.BackendIDs))
					for i, id := range s.BackendIDs {
						ids[i] = strconv.FormatUint(uint64(id), 10)
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\n", frontendString(s.Frontend), backendsString(s.Backends),
						affinityString(s.AffinityTimeoutSeconds), s.RevNATIndex, joinOrDash(ids, ","))
				}
				return nil
			})
		},
	})
	return cmd
}

func readLB(pinDir string) ([]BPFLBService, error) {
	res := []BPFLBService{}
	if _, err := os.Stat(filepath.Join(pinDir, datapath.MapLBServices)); errors.Is(err, os.ErrNotExist) {
		return res, fmt.Errorf("no service load-balancer pinned under %s: is the agent started with --kube-proxy-replacement? (--pin-dir selects another directory)", pinDir)
	}
	entries, err := datapath.ListPinnedLB(pinDir)
	if err != nil {
		if errors.Is(err, os.ErrPermission) || strings.Contains(err.Error(), "permission") {
			return res, fmt.Errorf("reading the load-balancer maps under %s needs root: %v", pinDir, err)
		}
		return res, err
	}
	list := agent.ServiceList(entries)
	for i, e := range entries {
		res = append(res, BPFLBService{Service: list.Services[i], RevNATIndex: e.RevNATIndex, BackendIDs: e.BackendIDs})
	}
	return res, nil
}
