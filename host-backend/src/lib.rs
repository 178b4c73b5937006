//! The host side of the paravirtual split: a vhost-user-blk backend (`tandem-backend`) built on
//! the rust-vmm crates, serving disk images to the guest's virtio-blk front-end (issue 7).
