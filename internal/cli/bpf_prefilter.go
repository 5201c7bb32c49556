package cli

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"

	"github.com/spf13/cobra"

	"github.com/sigil-net/sigil/datapath"
)

// BPFPrefilter is the XDP prefilter's state as the kernel holds it.
type BPFPrefilter struct {
	Interfaces []BPFPrefilterInterface `json:"interfaces"`
	Rules      []BPFPrefilterRule      `json:"rules"`
}

// BPFPrefilterInterface is an interface the prefilter is attached to.
type BPFPrefilterInterface struct {
	Name string `json:"name"`
	Mode string `json:"mode"`
}

// BPFPrefilterRule is one prefix of the deny list and what it dropped.
type BPFPrefilterRule struct {
	CIDR    netip.Prefix `json:"cidr"`
	Except  bool         `json:"except,omitempty"`
	RuleID  uint32       `json:"ruleID"`
	Packets uint64       `json:"packets"`
	Bytes   uint64       `json:"bytes"`
}

func newBPFPrefilterCommand(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "prefilter", Short: "The XDP prefilter: its deny list, drop counters and attachments"}
	cmd.AddCommand(&cobra.Command{
		Use:     "list",
		Short:   "List the denied CIDRs with their drop counters, and where the prefilter is attached",
		Example: "  sigil bpf prefilter list\n  sigil bpf prefilter list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := readPrefilter(o.pinDir)
			if err != nil {
				return err
			}
			return o.render(cmd.OutOrStdout(), res, func(w io.Writer) error {
				fmt.Fprintln(w, "CIDR\tRULE\tPACKETS\tBYTES")
				for _, r := range res.Rules {
					cidr := r.CIDR.String()
					if r.Except {
						cidr += " (except)"
					}
					fmt.Fprintf(w, "%s\t%d\t%d\t%d\n", cidr, r.RuleID, r.Packets, r.Bytes)
				}
				fmt.Fprintln(w)
				fmt.Fprintln(w, "INTERFACE\tXDP MODE")
				for _, i := range res.Interfaces {
					fmt.Fprintf(w, "%s\t%s\n", i.Name, i.Mode)
				}
				return nil
			})
		},
	})
	return cmd
}

func readPrefilter(pinDir string) (BPFPrefilter, error) {
	res := BPFPrefilter{Interfaces: []BPFPrefilterInterface{}, Rules: []BPFPrefilterRule{}}
	if _, err := os.Stat(filepath.Join(pinDir, datapath.MapPrefilter4)); errors.Is(err, os.ErrNotExist) {
		return res, fmt.Errorf("no prefilter pinned under %s: is the agent started with --prefilter-devices? (--pin-dir selects another directory)", pinDir)
	}
	entries, err := datapath.ListPinnedPrefilter(pinDir)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return res, fmt.Errorf("reading the prefilter under %s needs root: %v", pinDir, err)
		}
		return res, err
	}
	for _, e := range entries {
		res.Rules = append(res.Rules, BPFPrefilterRule{CIDR: e.Prefix, Except: e.Except, RuleID: e.RuleID, Packets: e.Packets, Bytes: e.Bytes})
	}
	attached, err := datapath.PrefilterAttachments(pinDir)
	if err != nil {
		return res, err
	}
	for name, mode := range attached {
		res.Interfaces = append(res.Interfaces, BPFPrefilterInterface{Name: name, Mode: string(mode)})
	}
	sort.Slice(res.Interfaces, func(i, j int) bool { return res.Interfaces[i].Name < res.Interfaces[j].Name })
	return res, nil
}
