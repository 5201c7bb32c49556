// Command sigil-cni is Sigil's CNI plugin. Container runtimes execute it;
// the logic lives in package cni.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/sigil-net/sigil/cni"
)

func main() {
	skel.PluginMainFuncs(cni.Funcs(), cni.PluginInfo, "sigil-cni: Sigil's CNI plugin (eBPF datapath, identity-based policy)")
}
