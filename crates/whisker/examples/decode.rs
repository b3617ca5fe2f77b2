fn main() {
    for p in std::env::args().skip(1) {
        match whisker::data::decode_file(std::path::Path::new(&p)) {
            Ok(i) => println!("{p}: ok {}x{}", i.width(), i.height()),
            Err(e) => println!("{p}: error: {e}"),
        }
    }
}
