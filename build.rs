// `sqlx::migrate!` embeds the migration folders at compile time: rebuild when they change, so that
// a new migration is never left out of the binary.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
