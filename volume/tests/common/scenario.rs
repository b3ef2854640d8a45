//! The VHD scenario run over every LUN path: fixed, dynamic and differencing images
//! created and written through `vhd::Image` on extent files, reopened from the committed
//! maps, checked against a model, then gathered into plain files and judged by qemu-img
//! and libvhdi; finally a deleted file's extents are reused and must read as zeros.
#![allow(dead_code, clippy::unwrap_used)]

use super::*;
use vhd::chain::{FnResolver, NoParents, ParentCandidate};
use vhd::create::{CreateOptions, ParentInfo, create_differencing, create_dynamic, create_fixed};
use vhd::{DiskType, Image, Storage};

const FIXED_SIZE: u64 = 6 * MIB;
const DYN_SIZE: u64 = 16 * MIB;

/// Writes through the image and the model alike.
fn put(img: &Image, model: &mut [u8], off: u64, data: &[u8]) {
    img.write_at(data, off).unwrap();
    model[off as usize..off as usize + data.len()].copy_from_slice(data);
}

fn check_image(img: &Image, model: &[u8]) {
    let mut got = vec![0u8; model.len()];
    img.read_at(&mut got, 0).unwrap();
    assert!(got == model, "{} reads back its model", img.identity());
}

fn write_raw(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap();
}

fn qemu_check_and_compare(vhd_path: &Path, model: &[u8], size: u64, dir: &Path) {
    let info = qemu_img(&[
        "info",
        "-f",
        "vpc",
        "--output=json",
        vhd_path.to_str().unwrap(),
    ]);
    assert!(
        info.contains(&format!("\"virtual-size\": {size}")),
        "qemu-img info: {info}"
    );
    let raw = dir.join("model.raw");
    write_raw(&raw, model);
    qemu_img(&[
        "compare",
        "-f",
        "vpc",
        "-F",
        "raw",
        vhd_path.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
}

const PYVHDI_DUMP: &str = r#"
import sys, pyvhdi
out, paths = sys.argv[1], sys.argv[2:]
files = []
for p in paths:
    f = pyvhdi.file()
    f.open(p)
    files.append(f)
for child, parent in zip(files, files[1:]):
    child.set_parent(parent)
top = files[0]
size = top.get_media_size()
with open(out, "wb") as o:
    off = 0
    while off < size:
        n = min(1 << 20, size - off)
        o.write(top.read_buffer_at_offset(n, off))
        off += n
"#;

/// The whole disk as libvhdi reads it (`chain`: child first).
pub fn pyvhdi_dump(chain: &[&Path], dir: &Path) -> Vec<u8> {
    let script = dir.join("dump.py");
    std::fs::write(&script, PYVHDI_DUMP).unwrap();
    let out = dir.join("pyvhdi.out");
    let mut args = vec![script.to_str().unwrap(), out.to_str().unwrap()];
    args.extend(chain.iter().map(|p| p.to_str().unwrap()));
    run("/usr/bin/python3", "python3-libvhdi", &args);
    std::fs::read(&out).unwrap()
}

/// Runs the whole scenario on `vol`, using `dir` for gathered files.
pub fn vhd_on_volume(vol: &Vol, dir: &Path) {
    // Fixed.
    let (ff, fsink) = vol.create("fixed");
    create_fixed(
        ff.as_ref(),
        &CreateOptions::new(DiskType::Fixed, FIXED_SIZE),
    )
    .unwrap();
    let mut fmodel = vec![0u8; FIXED_SIZE as usize];
    {
        let img = Image::open_storage(ff.clone(), false, "vol:fixed", &NoParents).unwrap();
        put(&img, &mut fmodel, 0, &pattern(1, 0, 4096));
        put(
            &img,
            &mut fmodel,
            1_000_003,
            &pattern(2, 1_000_003, 300_000),
        );
        put(&img, &mut fmodel, MIB - 512, &pattern(3, MIB - 512, 1024)); // across an extent
        put(&img, &mut fmodel, FIXED_SIZE - 4096, &pattern(4, 0, 4096));
        img.flush().unwrap();
    }
    assert!(!ff.has_pending());
    assert_eq!(fsink.last().unwrap().len, FIXED_SIZE + 512);
    drop(ff);
    let ff = vol.reopen("fixed", &fsink, true);
    let img = Image::open_storage(ff.clone(), false, "vol:fixed", &NoParents).unwrap();
    check_image(&img, &fmodel);
    drop(img);
    let fixed_path = dir.join("fixed.vhd");
    gather(&ff, &fixed_path);
    qemu_check_and_compare(&fixed_path, &fmodel, FIXED_SIZE, dir);

    // Dynamic.
    let (df, dsink) = vol.create("dynamic");
    create_dynamic(
        df.as_ref(),
        &CreateOptions::new(DiskType::Dynamic, DYN_SIZE),
    )
    .unwrap();
    let mut dmodel = vec![0u8; DYN_SIZE as usize];
    {
        let img = Image::open_storage(df.clone(), false, "vol:dynamic", &NoParents).unwrap();
        put(&img, &mut dmodel, 12 * MIB + 7, &pattern(5, 7, 70_000));
        put(
            &img,
            &mut dmodel,
            0,
            &pattern(6, 0, (2 * MIB + 4096) as usize),
        );
        put(&img, &mut dmodel, 5 * MIB, &pattern(7, 0, 512));
        img.flush().unwrap();
        put(&img, &mut dmodel, DYN_SIZE - 4096, &pattern(8, 0, 4096));
        img.flush().unwrap();
    }
    assert!(!df.has_pending());
    drop(df);
    let df = vol.reopen("dynamic", &dsink, true);
    let img = Image::open_storage(df.clone(), false, "vol:dynamic", &NoParents).unwrap();
    check_image(&img, &dmodel);
    drop(img);
    let dyn_path = dir.join("dynamic.vhd");
    gather(&df, &dyn_path);
    // qemu-img has no check for vpc: the vhd crate's checker and libvhdi instead.
    let report = vhd::check::check_path(&dyn_path, None).unwrap();
    assert_eq!((report.corruptions(), report.leaks()), (0, 0), "{report:?}");
    let info = run("vhdiinfo", "libvhdi-utils", &[dyn_path.to_str().unwrap()]);
    assert!(info.contains("Dynamic"), "{info}");
    qemu_check_and_compare(&dyn_path, &dmodel, DYN_SIZE, dir);
    drop(df);

    // Differencing child over the dynamic image, which is now a read-only parent.
    let parent = vol.reopen("dynamic", &dsink, false);
    assert!(parent.write(b"x", 0).is_err(), "a parent refuses writes");
    let pimg = Image::open_storage(parent.clone(), true, "vol:dynamic", &NoParents).unwrap();
    let info = ParentInfo {
        uuid: pimg.footer().uuid,
        virtual_size: pimg.virtual_size(),
        timestamp: pimg.footer().timestamp,
        name: "dynamic.vhd".into(),
        absolute: Some(dyn_path.to_str().unwrap().into()),
        relative: Some("./dynamic.vhd".into()),
    };
    drop(pimg);
    let (cf, csink) = vol.create("child");
    create_differencing(cf.as_ref(), &info, 2 * MIB as u32, None).unwrap();
    let p2 = parent.clone();
    let resolver = FnResolver(
        move |_: vhd::chain::ChildRef<'_>, _: &vhd::chain::ParentHints| {
            (
                vec![ParentCandidate {
                    storage: p2.clone() as Arc<dyn Storage>,
                    identity: "vol:dynamic".into(),
                    path: None,
                }],
                vec!["volume catalog".into()],
            )
        },
    );
    let mut cmodel = dmodel.clone();
    {
        let img = Image::open_storage(cf.clone(), false, "vol:child", &resolver).unwrap();
        check_image(&img, &cmodel);
        // 4 KiB-aligned (libvhdi reads partial sectors of a bitmap byte as zero).
        put(&img, &mut cmodel, 12 * MIB, &pattern(9, 0, 8192));
        put(
            &img,
            &mut cmodel,
            3 * MIB,
            &pattern(10, 0, 3 * MIB as usize),
        );
        img.flush().unwrap();
    }
    drop(cf);
    let cf = vol.reopen("child", &csink, true);
    let img = Image::open_storage(cf.clone(), false, "vol:child", &resolver).unwrap();
    check_image(&img, &cmodel);
    drop(img);
    let child_path = dir.join("child.vhd");
    gather(&cf, &child_path);
    assert!(
        pyvhdi_dump(&[&child_path, &dyn_path], dir) == cmodel,
        "libvhdi reads the chain gathered from the volume"
    );
    let info = run("vhdiinfo", "libvhdi-utils", &[child_path.to_str().unwrap()]);
    assert!(info.contains("Differential"), "{info}");
    drop(cf);

    // Delete the dynamic image and the child; their extents are reused by a new file
    // that must read zeros wherever it did not write.
    drop(parent);
    vol.delete(&dsink);
    vol.delete(&csink);
    vol.delete(&fsink);
    let (nf, _nsink) = vol.create("new");
    let want = vol.pool.available() * vol.sb.layout.extent_size;
    nf.set_len(want).unwrap();
    nf.write(b"only this", 5).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut off = 0;
    while off < want {
        nf.read(&mut buf, off).unwrap();
        let expect_nonzero = off == 0;
        for (i, &b) in buf.iter().enumerate() {
            if !(expect_nonzero && (5..14).contains(&i)) {
                assert_eq!(
                    b,
                    0,
                    "stale byte at {} of the reused extents",
                    off + i as u64
                );
            }
        }
        off += buf.len() as u64;
    }
    nf.flush().unwrap();
}
