//! Corral's fanout service (work in progress).
fn main() -> anyhow::Result<()> {
    anyhow::bail!("corral-fanout is not implemented yet")
}
