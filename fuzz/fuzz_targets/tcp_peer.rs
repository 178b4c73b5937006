#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_fuzz::tcp_peer::run(data));
