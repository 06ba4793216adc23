//! The module calls Envoy's `envoy_dynamic_module_callback_*` functions, which only
//! Envoy's binary defines (it resolves them when it loads the `.so`). A unit-test
//! executable has no Envoy to link against: there they stay unresolved, and the
//! tests never reach them. (The `.so` leaves them undefined anyway: a shared
//! library may.)
fn main() {
    println!("cargo:rustc-link-arg=-Wl,--unresolved-symbols=ignore-all");
    // Bound when first called, which the tests never do (Rust links with `-z now`).
    println!("cargo:rustc-link-arg=-Wl,-z,lazy");
}
