//! The shared-memory region device: an ivshmem-plain device over a file-backed memory
//! backend shows up as `nvram0`, and stores made through the HPDI land in the real backing
//! file and are found again by the next boot.

use tandem_qemu::builder::{Machine, SharedRegion};
use tandem_qemu::exit::GuestExit;
use tandem_qemu::size::ByteSize;
use tandem_tests::*;

#[test]
fn nvram_region_is_real_shared_memory() {
    let dir = tandem_qemu::scratch::tempdir().unwrap();
    let file = dir.path().join("nvram.bin");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    for boot in 1..=2u32 {
        let cmd = guest_command(Machine::Q35, dir.path())
            .shared_region(SharedRegion::new(&file, ByteSize::mib(16)))
            .cmdline("debug.nvram=stamp exit=ready");
        let mut vm = spawn(&cmd, dir.path());
        let ready = vm
            .wait_ready(BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ready.get("nvram"), Some("1"), "{ready:?}");
        let line = vm
            .wait_for_line("nvram stamp", BOOT_TIMEOUT, |l| {
                l.text.contains("nvram: nvram0 found")
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let before = if boot == 1 {
            String::new()
        } else {
            format!("TANDEM-NVRAM boot={}", boot - 1)
        };
        assert!(
            line.text.contains(&format!(
                "found \"{before}\"; stamped \"TANDEM-NVRAM boot={boot}\""
            )),
            "{}",
            line.text
        );
        assert_eq!(
            vm.wait_exit(BOOT_TIMEOUT).unwrap(),
            GuestExit::Clean,
            "{}",
            console(&vm)
        );
        let inv = inventory(&vm);
        let nv = inv
            .iter()
            .find(|e| e.kind == "ivshmem")
            .expect("ivshmem in the inventory");
        assert_eq!(nv.name.as_deref(), Some("nvram0"));
        assert_eq!(nv.prop("size"), Some("16MiB"));
        // The host sees the guest's store in the backing file.
        let bytes = std::fs::read(&file).unwrap();
        let want = format!("TANDEM-NVRAM boot={boot}");
        assert_eq!(&bytes[..want.len()], want.as_bytes());
    }
}
