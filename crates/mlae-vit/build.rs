#[path = "../../build-support/torch_link.rs"]
mod torch_link;

fn main() {
    torch_link::emit(torch_link::Targets::All);
}
