//! containerd-shim-kata-v2 library: everything the shim binary and kata-ctl share.
