//! Fuzzes kilnd's request bodies: any bytes, parsed as each JSON body the API takes, must give
//! a value or a 400 naming the problem, never a panic; a VM definition that parses is checked
//! field by field (`validate::create_vm`), which must not panic either.

#![no_main]

use kiln_api::{CreateGrant, CreateUser, CreateVm};
use kilnd::api::parse_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = parse_json::<CreateVm>(data) {
        let _ = kilnd::validate::create_vm(&spec, 4096);
    }
    let _ = parse_json::<CreateUser>(data);
    let _ = parse_json::<CreateGrant>(data);
    if let Err(failure) = parse_json::<CreateVm>(data) {
        assert_eq!(failure.status, 400, "a bad body is a 400");
        assert!(!failure.body.message.is_empty(), "and says why");
    }
});
