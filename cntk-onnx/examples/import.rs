//! Converts a CNTK v2 model file to an ONNX file: `cargo run --example import -- in.dnn out.onnx`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        return Err("usage: import <model.dnn> <model.onnx>".into());
    };
    let name = std::path::Path::new(input)
        .file_name()
        .map_or(input.clone(), |n| n.to_string_lossy().into_owned());
    let imported = cntk_onnx::import(&std::fs::read(input)?, &name)?;
    std::fs::write(output, &imported.onnx)?;
    println!(
        "{input} -> {output}: {} nodes, {} weights, input {:?}, output {:?}",
        imported.nodes, imported.parameters, imported.input_shape, imported.output_shape
    );
    Ok(())
}
