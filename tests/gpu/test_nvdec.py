"""NVDEC decoding (runtime/gpu/nvdec.py) against a PyNvVideoCodec that behaves like 2.2.4's.

Everything here runs without a GPU: :mod:`gpu_fakes` lays decoded frames out as the real library
does (element strides, packed rows, ``H // 2`` chroma rows listed, timestamps, header counts) and
copies with CUDA's refusals, so each test below fails on the defect it is named after.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.gpu_fakes import (FAKE_CAPS, FakeDecodedFrame, FakeSimpleDecoder, HostMemory,
                       PyNvVCExceptionUnsupported, fake_pynvvideocodec, install_fake_gpu)
from helpers.media import has_encoder, pattern, textured, write_video

from cover_engine.runtime.gpu import cuda as gpu
from cover_engine.runtime.gpu import nvdec
from cover_engine.runtime.gpu.nvdec import (NvdecDecoder, NvdecUnavailable, caps_refusal,
                                            frame_sources, nvdec_refusal, plane_layout,
                                            with_container_hint)
from cover_engine.runtime.media.decode import MediaInfo, probe


def _videos(folder: Path) -> dict[str, Path]:
    """Small clips of the kinds the issue lists: H.264 with B-frames, HEVC 10- and 12-bit,
    VP9 with odd width and height."""
    out = {"h264": write_video(folder / "h264.mp4", [textured(96, 128, t) for t in range(20)],
                               options={"bf": "2", "g": "8", "qp": "0"})}
    if has_encoder("libx265"):
        for bits in (10, 12):
            out[f"hevc{bits}"] = write_video(
                folder / f"hevc{bits}.mkv", [textured(64, 96, t) for t in range(12)],
                codec="libx265", pix_fmt=f"yuv420p{bits}le",
                options={"x265-params": "log-level=error:lossless=1"})
    if has_encoder("libvpx-vp9"):
        out["vp9-odd"] = write_video(folder / "vp9-odd.webm",
                                     [textured(117, 175, t) for t in range(12)],
                                     codec="libvpx-vp9",
                                     options={"lossless": "1", "deadline": "realtime",
                                              "cpu-used": "8"})
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    return _videos(tmp_path_factory.mktemp("nvdec"))


@pytest.fixture
def fake_nvdec(monkeypatch):
    """A fake GPU and a fake PyNvVideoCodec 2.2.4."""
    install_fake_gpu(monkeypatch)
    module = fake_pynvvideocodec()
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", module)
    monkeypatch.setattr(nvdec, "_pynvvideocodec", lambda: (module, ""))
    FakeSimpleDecoder.made.clear()
    return module


def _pyav_planes(path, indices):
    """Y, U, V code values of frames ``indices``, as the CPU path decodes them."""
    import av

    wanted, out = set(indices), {}
    with av.open(str(path)) as container:
        for k, frame in enumerate(container.decode(video=0)):
            if k in wanted:
                dtype = np.dtype(np.uint8 if frame.format.components[0].bits <= 8 else "<u2")
                out[k] = [np.frombuffer(p, dtype, count=p.line_size * p.height // dtype.itemsize)
                          .reshape(p.height, -1)[:, :p.width] for p in frame.planes]
    return out


def _decode(decoder, path, indices):
    info = probe(path)
    return decoder.decode(path, np.asarray(indices), info, stream=gpu.Stream()), info


# ------------------------------------------------------------------------------ plane layouts


def _cai(shape, strides, typestr, ptr=4096):
    return {"shape": shape, "strides": strides, "typestr": typestr, "data": (ptr, False),
            "version": 3}


def test_plane_pitch_from_element_strides_as_pynvvideocodec_reports_them():
    """Defect 1: P016 planes list strides in elements; read as bytes, the pitch was half a row
    and every 10/12-bit copy failed."""
    luma = plane_layout(_cai((1080, 1920, 1), (1920, 1, 1), "|u2"))
    chroma = plane_layout(_cai((540, 960, 2), (1920, 2, 1), "|u2"))
    assert (luma.rows, luma.row_bytes, luma.pitch, luma.sample_bytes) == (1080, 3840, 3840, 2)
    assert (chroma.rows, chroma.row_bytes, chroma.pitch) == (540, 3840, 3840)


@pytest.mark.parametrize("strides,pitch", [((3840, 2, 2), 3840), ((4096, 2, 2), 4096),
                                           (None, 3840)], ids=["bytes", "pitched", "packed"])
def test_plane_pitch_from_byte_strides_or_none(strides, pitch):
    """The CUDA Array Interface's own convention (bytes), and no strides (C-contiguous)."""
    assert plane_layout(_cai((1080, 1920, 1), strides, "|u2")).pitch == pitch


def test_nv12_strides_read_the_same_either_way():
    assert plane_layout(_cai((240, 320, 1), (320, 1, 1), "|u1")).pitch == 320
    assert plane_layout(_cai((120, 160, 2), (320, 2, 1), "|u1")).pitch == 320


@pytest.mark.parametrize("strides,message", [((1920, 3, 3), "neither bytes nor"),
                                             ((1000, 1, 1), "below its rows")])
def test_impossible_strides_mean_the_cpu_path(strides, message):
    with pytest.raises(NvdecUnavailable, match=message):
        plane_layout(_cai((1080, 1920, 1), strides, "|u2"))


def test_three_planes_are_not_semi_planar():
    frame = type("F", (), {"cuda": lambda self: [type("P", (), {
        "__cuda_array_interface__": _cai((4, 4, 1), None, "|u1")})()] * 3})()
    with pytest.raises(NvdecUnavailable, match="3 planes"):
        nvdec.frame_planes(frame)


def test_odd_height_reads_the_chroma_row_the_frame_buffer_holds(videos):
    """Defect 3: PyNvVideoCodec lists ``H // 2`` chroma rows; the packed frame holds
    ``ceil(H / 2)``, and the last luma row needs the last of them."""
    import av

    with av.open(str(videos["h264"])) as container:
        picture = next(container.decode(video=0))
    frame = FakeDecodedFrame(picture, 8)
    height, width = picture.height - 1, picture.width  # as if the picture were one row shorter
    frame._planes[1].__cuda_array_interface__["shape"] = (height // 2, width // 2, 2)
    frame.buffer = frame.buffer  # keep alive
    luma, luma_pitch, chroma, chroma_pitch, sample = frame_sources(frame, height, width)
    assert (luma_pitch, chroma_pitch, sample) == (width, width, 1)
    assert chroma == luma + picture.height * width
    frame.framesize = lambda: (picture.height + height // 2) * width  # the row is not there
    with pytest.raises(NvdecUnavailable, match="odd height"):
        frame_sources(frame, height, width)


# ------------------------------------------------------------------------------ refusals


def _info(**change) -> MediaInfo:
    base = dict(path="x.mp4", num_frames=10, width=64, height=48, fps=25.0, codec="h264",
                pix_fmt="yuv420p", bit_depth=8, matrix="bt601", full_range=False, rotation=0,
                is_image=False, counted=False)
    return MediaInfo(**{**base, **change})


def test_refusals_need_no_gpu():
    assert "images" in nvdec_refusal(_info(is_image=True))
    assert "yuv444p" in nvdec_refusal(_info(pix_fmt="yuv444p"))
    assert "rotation" in nvdec_refusal(_info(rotation=90), rotate=True)
    assert nvdec_refusal(_info(codec="ffv1")) == "NVDEC has no ffv1 decoder"
    assert "prores" in nvdec_refusal(_info(codec="prores"))


def test_interlaced_streams_are_refused(tmp_path):
    """Defect 4: NVDEC deinterlaces where PyAV weaves the fields; probe finds the interlacing
    of a real field-coded H.264 file and the file takes the CPU path."""
    path = write_video(tmp_path / "interlaced.mkv", [pattern(96, 128, t) for t in range(6)],
                       options={"flags": "+ilme+ildct", "x264-params": "interlaced=1:tff=1",
                                "qp": "10"})
    info = probe(path)
    assert info.interlaced
    assert "interlaced" in nvdec_refusal(info)
    assert not probe(write_video(tmp_path / "progressive.mkv",
                                 [pattern(96, 128, t) for t in range(6)])).interlaced


def test_decoder_caps_rule_out_what_this_gpu_lacks():
    """Defect 5: GetDecoderCaps answers an empty dict for an unsupported codec / bit depth."""
    assert caps_refusal({}, "H.264 10-bit", 64, 48) == \
        "this GPU's NVDEC cannot decode H.264 10-bit"
    assert "cannot decode" in caps_refusal({"num_decoder_engines": 0}, "AV1 12-bit", 64, 48)
    caps = {"num_decoder_engines": 7, "width_min": 48, "height_min": 16, "width_max": 4096,
            "height_max": 4096}
    assert caps_refusal(caps, "HEVC 10-bit", 1920, 1080) is None
    assert "outside" in caps_refusal(caps, "HEVC 10-bit", 8192, 4320)
    assert "outside" in caps_refusal(caps, "HEVC 10-bit", 32, 32)


def test_unsupported_bit_depth_is_refused_before_decoding(fake_nvdec, tmp_path):
    """An H.264 High10 file on a GPU without that decoder: NvdecUnavailable, no decoder made."""
    path = write_video(tmp_path / "high10.mp4", [pattern(64, 96, t) for t in range(6)],
                       pix_fmt="yuv420p10le", options={"qp": "0"})
    with pytest.raises(NvdecUnavailable, match="cannot decode H.264 10-bit"):
        _decode(NvdecDecoder(), path, [0, 3])
    assert FakeSimpleDecoder.made == []


def test_container_hint_names_the_video_capability():
    """Defect 9: without the ``video`` driver capability the NVDEC library is missing and
    every file takes the CPU path; the notice says what to set."""
    reason = with_container_hint("PyNvVideoCodec cannot start: libnvcuvid.so.1: cannot open "
                                 "shared object file")
    assert reason.endswith("containers need NVIDIA_DRIVER_CAPABILITIES to include video")
    assert with_container_hint("NVDEC cannot decode this vp8 stream: x", {}) == \
        "NVDEC cannot decode this vp8 stream: x"
    # in a GPU container without the video capability, any NVDEC refusal names the setting
    plain = "PyNvVideoCodec cannot start: RuntimeError"
    assert "include video" in with_container_hint(plain, {"NVIDIA_DRIVER_CAPABILITIES":
                                                          "compute,utility"})
    for caps in ("compute,utility,video", "all"):
        assert with_container_hint(plain, {"NVIDIA_DRIVER_CAPABILITIES": caps}) == plain


# ------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize("name", ["h264", "hevc10", "hevc12", "vp9-odd"])
def test_nvdec_frames_are_the_cpu_frames(fake_nvdec, videos, name):
    """Defects 1 and 3 end to end: NV12 and P016 frames (element strides, odd width and height)
    copied into the kernels' layout hold exactly the code values PyAV decodes."""
    if name not in videos:
        pytest.skip(f"no encoder for {name} here")
    path = videos[name]
    wanted = [0, 3, 4, 9, 11]
    frames, info = _decode(NvdecDecoder(), path, wanted)
    want = _pyav_planes(path, wanted)
    shift = 16 - info.bit_depth if info.bit_depth > 8 else 0
    assert frames.sample_shift == shift
    for slot, index in enumerate(wanted):
        luma, chroma = frames.download(slot)
        y, u, v = want[index]
        np.testing.assert_array_equal(luma >> shift, y, err_msg=f"{name} frame {index} Y")
        np.testing.assert_array_equal(chroma[:, 0::2] >> shift, u, err_msg=f"{name} {index} U")
        np.testing.assert_array_equal(chroma[:, 1::2] >> shift, v, err_msg=f"{name} {index} V")
    frames.close()


def test_one_decoder_serves_many_files(fake_nvdec, videos, tmp_path):
    """Defect 7: the decoder is opened with a maximum size, so later files of the same codec
    and bit depth reconfigure it; a larger file or another bit depth opens a new one."""
    decoder = NvdecDecoder(max_size=(128, 96))
    second = write_video(tmp_path / "second.mp4", [textured(80, 112, t) for t in range(10)],
                         options={"qp": "0"})
    for path in (videos["h264"], second, videos["h264"]):
        _decode(decoder, path, [1, 5])[0].close()
    assert decoder.opened == 1 and decoder.reconfigured == 2
    made = FakeSimpleDecoder.made[0]
    assert (made.max_width, made.max_height) == (128, 96)
    assert made.kwargs["use_device_memory"] and made.kwargs["output_color_type"] == "NATIVE"
    big = write_video(tmp_path / "big.mp4", [textured(112, 160, t) for t in range(6)],
                      options={"qp": "0"})
    _decode(decoder, big, [2])[0].close()
    assert decoder.opened == 2 and (FakeSimpleDecoder.made[1].max_width,
                                    FakeSimpleDecoder.made[1].max_height) == (160, 112)
    if "hevc10" in videos:
        _decode(decoder, videos["hevc10"], [2])[0].close()
        assert decoder.opened == 3


def test_a_substituted_frame_is_caught(fake_nvdec, videos):
    """Defect 6: near the end of some containers the seek returns a nearby frame instead of
    the one asked for; its timestamp gives it away and the file takes the CPU path."""
    class Substituting(FakeSimpleDecoder):
        def _substitute(self, frames, index):
            return frames[index - 1] if index == max(frames) and index - 1 in frames else \
                frames[index]

    fake_nvdec.SimpleDecoder = Substituting
    with pytest.raises(NvdecUnavailable, match="returned frame 10 for frame 11"):
        _decode(NvdecDecoder(), videos["h264"], [2, 10, 11])


def test_dropped_indices_are_caught(fake_nvdec, videos):
    """The real get_batch_frames_by_index skips indices beyond its count (with a warning)."""
    class ShortHeader(FakeSimpleDecoder):
        def __len__(self):
            return 8

    fake_nvdec.SimpleDecoder = ShortHeader
    with pytest.raises(NvdecUnavailable, match="finds 8 frames, frame 11 is needed"):
        _decode(NvdecDecoder(), videos["h264"], [2, 11])


@pytest.mark.parametrize("error,kind", [
    (RuntimeError("CUDA_ERROR_OUT_OF_MEMORY: cuMemAlloc failed"), "oom"),
    (PyNvVCExceptionUnsupported("HandleVideoSequence: unsupported config"), "fallback"),
    (Exception("Elementary streams not supported by Simple Decoder."), "fallback"),
    (RuntimeError("cuvidDecodePicture returned error 700"), "sticky"),
])
def test_library_errors_are_told_apart(fake_nvdec, videos, monkeypatch, error, kind):
    """Defect 6: only what means "NVDEC declines this stream" falls back; out of memory and a
    broken CUDA context are GPU failures and raised as such."""
    class Failing(FakeSimpleDecoder):
        def get_batch_frames_by_index(self, indices):
            raise error

    fake_nvdec.SimpleDecoder = Failing
    if kind == "sticky":
        monkeypatch.setattr(gpu, "device_fault", lambda: "cudaErrorIllegalAddress")
    with pytest.raises(gpu.GpuError) as caught:
        _decode(NvdecDecoder(), videos["h264"], [1])
    assert isinstance(caught.value, NvdecUnavailable) == (kind == "fallback")
    if kind == "oom":
        assert caught.value.out_of_memory and "out of GPU memory" in str(caught.value)
    if kind == "sticky":
        assert caught.value.sticky and "cudaErrorIllegalAddress" in str(caught.value)


def test_programming_errors_are_not_hidden(fake_nvdec, videos):
    class Broken(FakeSimpleDecoder):
        def get_batch_frames_by_index(self, indices):
            raise TypeError("get_batch_frames_by_index() got an unexpected keyword")

    fake_nvdec.SimpleDecoder = Broken
    with pytest.raises(TypeError):
        _decode(NvdecDecoder(), videos["h264"], [1])


def test_a_failed_copy_falls_back_and_returns_the_buffer(fake_nvdec, videos, monkeypatch):
    """Defect 2: a copy the driver refuses means the CPU path, not a failed file, and the
    frame buffer goes back to the pool instead of leaking."""
    calls = []

    def refusing(dst, dst_pitch, src, src_pitch, width, rows, stream):
        calls.append(rows)
        if len(calls) == 3:
            raise gpu.GpuError("cudaMemcpy2DAsync failed: cudaErrorInvalidValue",
                               status="cudaErrorInvalidValue")

    monkeypatch.setattr(gpu, "copy_2d", refusing)
    decoder = NvdecDecoder()
    with pytest.raises(NvdecUnavailable, match="copying NVDEC's frames failed"):
        _decode(decoder, videos["h264"], [1, 2])
    assert decoder.pool.leased == 0 and decoder.pool.idle_bytes > 0


def test_a_copy_that_fails_for_want_of_memory_is_raised(fake_nvdec, videos, monkeypatch):
    def exhausted(*args):
        raise gpu.GpuError("cudaMemcpy2DAsync failed: cudaErrorMemoryAllocation",
                           status="cudaErrorMemoryAllocation")

    monkeypatch.setattr(gpu, "copy_2d", exhausted)
    decoder = NvdecDecoder()
    with pytest.raises(gpu.GpuError) as caught:
        _decode(decoder, videos["h264"], [1])
    assert not isinstance(caught.value, NvdecUnavailable) and caught.value.out_of_memory
    assert decoder.pool.leased == 0


def test_frames_reuse_pooled_buffers(fake_nvdec, videos):
    """Defect 8: file after file, the frame buffers come from the pool (no cudaMalloc and no
    device-wide cudaFree per file); the caller's stream waits on the decoder, not the host."""
    decoder = NvdecDecoder()
    for _ in range(4):
        frames, _ = _decode(decoder, videos["h264"], [0, 6, 12])
        frames.close()
    assert decoder.pool.allocations == 2  # the frames, and their address tables
    assert decoder.pool.leased == 0


def test_fake_frames_are_freed(fake_nvdec, videos):
    """The fake's bookkeeping itself: decoded surfaces leave the registry when dropped."""
    before = len(HostMemory.blocks)
    frames, _ = _decode(NvdecDecoder(), videos["h264"], [0])
    frames.close()
    import gc

    gc.collect()
    assert len(HostMemory.blocks) <= before + 2


def test_fake_caps_table_is_an_h100s():
    assert ("H264", 10) not in FAKE_CAPS and ("AV1", 12) not in FAKE_CAPS


# ------------------------------------------------------------------------------ on a GPU


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["h264", "hevc10", "hevc12", "vp9-odd"])
def test_real_nvdec_frames_are_the_cpu_frames(videos, name, nvdec_required):
    """The real PyNvVideoCodec: NVDEC must take each file (a refusal fails the test) and its
    frames, copied into the kernels' layout, hold PyAV's code values (odd sizes included)."""
    if name not in videos:
        pytest.skip(f"no encoder for {name} here")
    path = videos[name]
    info = probe(path)
    assert nvdec_refusal(info) is None
    wanted = [0, 3, 4, 9, 11]
    gpu.use_device(0)
    stream = gpu.Stream()
    frames = NvdecDecoder().decode(path, np.asarray(wanted), info, stream=stream)
    stream.synchronize()
    want = _pyav_planes(path, wanted)
    shift = frames.sample_shift
    for slot, index in enumerate(wanted):
        luma, chroma = frames.download(slot)
        y, u, v = want[index]
        np.testing.assert_array_equal(luma >> shift, y, err_msg=f"{name} frame {index} Y")
        np.testing.assert_array_equal(chroma[:, 0::2] >> shift, u, err_msg=f"{name} {index} U")
        np.testing.assert_array_equal(chroma[:, 1::2] >> shift, v, err_msg=f"{name} {index} V")
    frames.close()
    stream.close()


@pytest.mark.gpu
def test_real_nvdec_serves_many_files_with_one_decoder(videos, tmp_path, nvdec_required):
    """Several files of one codec and bit depth through one SimpleDecoder (reconfigured)."""
    other = write_video(tmp_path / "other.mp4", [textured(80, 112, t) for t in range(10)],
                        options={"qp": "0"})
    decoder = NvdecDecoder()
    gpu.use_device(0)
    stream = gpu.Stream()
    for path in (videos["h264"], other, videos["h264"], other):
        frames = decoder.decode(path, np.asarray([1, 5]), probe(path), stream=stream)
        stream.synchronize()
        luma, _ = frames.download(1)
        np.testing.assert_array_equal(luma, _pyav_planes(path, [5])[5][0], err_msg=str(path))
        frames.close()
    assert decoder.opened == 1 and decoder.reconfigured == 3
    decoder.close()
    stream.close()
