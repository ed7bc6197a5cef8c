"""Decrypt MindSpore-encrypted checkpoints block by block (reference: ckpt-format.md §8).

A file is a sequence of independently encrypted blocks of at most 64 MiB of plaintext:

    magic(4) [GCM: tag(16)] block_len(4) iv_len(4) iv(iv_len) cipher_len(4) ciphertext(cipher_len)

(integers little-endian). The plaintext of all blocks, concatenated, is a plain checkpoint. We stream it
into an anonymous temporary file, so memory stays bounded and nothing is left on disk afterwards.
"""

import errno
import tempfile

from .errors import CheckpointError

MAGICS = {
    bytes.fromhex("d85e3a7f"): "AES-GCM",
    bytes.fromhex("d95e3a7f"): "AES-CBC",
    bytes.fromhex("da5e3a7f"): "SM4-CBC",
}
MODES = ("AES-GCM", "AES-CBC", "SM4-CBC")
_CHUNK = 1 << 20
_MAX_BLOCK = (64 << 20) + 64        # 64 MiB of plaintext plus padding and a little slack
_CRC_TRAILER = b"crc_num"           # an encrypted file saved with crc_check=True ends with crc_num + 10 zero bytes


def mode_of(head):
    """The encryption mode named by a file's first four bytes, or None."""
    return MAGICS.get(bytes(head[:4]))


def _ciphers():
    try:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives import padding
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    except ImportError:
        return None
    return Cipher, algorithms, modes, padding, InvalidTag


def check_key(path, key, mode):
    if mode not in MODES:
        raise CheckpointError(path, f"unknown decryption mode {mode!r} (use one of {', '.join(MODES)})")
    sizes = (16,) if mode == "SM4-CBC" else (16, 24, 32)
    if len(key) not in sizes:
        raise CheckpointError(path, f"a {mode} key must be {' or '.join(map(str, sizes))} bytes, "
                              f"got {len(key)}")


def decrypt_to_tempfile(source, key, mode, tmp_dir=None):
    """Decrypt ``source`` (a msckpt.source.Source) into an unlinked temporary file; returns it, at offset 0."""
    path = source.path
    file_mode = mode_of(source[0:4])
    if file_mode != mode:
        raise CheckpointError(path, f"file is encrypted with {file_mode}, but --dec-mode is {mode}", 0)
    check_key(path, key, mode)
    libs = _ciphers()
    if libs is None:
        raise CheckpointError(path, f"file is encrypted ({mode}); decrypting needs the 'cryptography' "
                              "package: pip install 'ms2gguf[crypto]'")
    out = tempfile.TemporaryFile(dir=tmp_dir, prefix="ms2gguf-decrypted-")
    try:
        pos = 0
        while pos < source.size:
            rest = source.size - pos
            if rest == 17 and source[pos:pos + 7] == _CRC_TRAILER:
                break       # crc_num trailer after the ciphertext: MindSpore writes zeros there; ignore it
            pos = _block(source, pos, key, mode, out, libs)
        out.flush()
        out.seek(0)
        return out
    except OSError as err:
        out.close()
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            where = tmp_dir or tempfile.gettempdir()
            raise CheckpointError(path, f"no space left in {where} for the decrypted checkpoint (about "
                                  f"{source.size / 2**20:.1f} MiB); choose another place with --tmp-dir") from None
        raise
    except BaseException:
        out.close()
        raise


def _u32(source, pos, what):
    if pos + 4 > source.size:
        raise CheckpointError(source.path, f"truncated encrypted block ({what})", pos)
    return int.from_bytes(source[pos:pos + 4], "little")


def _block(source, pos, key, mode, out, libs):
    Cipher, algorithms, modes, padding, InvalidTag = libs
    path = source.path
    start = pos
    if mode_of(source[pos:pos + 4]) != mode:
        raise CheckpointError(path, f"expected a {mode} block header", pos)
    pos += 4
    tag = None
    if mode == "AES-GCM":
        if pos + 16 > source.size:
            raise CheckpointError(path, "truncated encrypted block (GCM tag)", pos)
        tag = bytes(source[pos:pos + 16])
        pos += 16
    block_len = _u32(source, pos, "block length")
    pos += 4
    if block_len > source.size - pos or block_len > _MAX_BLOCK + 32:
        raise CheckpointError(path, f"encrypted block length {block_len} runs past the end of the file", pos - 4)
    iv_len = _u32(source, pos, "IV length")
    if iv_len not in (12, 16):
        raise CheckpointError(path, f"unexpected IV length {iv_len}", pos)
    iv = bytes(source[pos + 4:pos + 4 + iv_len])
    pos += 4 + iv_len
    cipher_len = _u32(source, pos, "ciphertext length")
    pos += 4
    if block_len != 8 + iv_len + cipher_len or cipher_len > source.size - pos:
        raise CheckpointError(path, f"inconsistent encrypted block lengths (block {block_len}, "
                              f"ciphertext {cipher_len})", start)
    body = (pos, cipher_len)

    if mode == "AES-GCM":
        # MindSpore 2.10 uses the first 12 IV bytes as the nonce; other builds may use all 16.
        nonces = [iv[:12], iv] if len(iv) == 16 else [iv]
        mark = out.tell()
        for nonce in nonces:
            out.seek(mark)
            out.truncate()
            try:
                _stream(source, body, Cipher(algorithms.AES(key), modes.GCM(nonce, tag)).decryptor(), out)
                break
            except InvalidTag:
                continue
        else:
            raise CheckpointError(path, "AES-GCM authentication failed (wrong --dec-key, or the block is "
                                  "corrupted)", start)
    else:
        algorithm = algorithms.AES(key) if mode == "AES-CBC" else algorithms.SM4(key)
        if cipher_len % 16:
            raise CheckpointError(path, f"{mode} ciphertext of {cipher_len} bytes is not a multiple of 16", start)
        unpad = padding.PKCS7(128).unpadder()
        try:
            _stream(source, body, Cipher(algorithm, modes.CBC(iv)).decryptor(), out, unpad)
        except ValueError:
            raise CheckpointError(path, f"{mode} padding is invalid (wrong --dec-key, or the block is "
                                  "corrupted)", start) from None
    return pos + cipher_len


def _stream(source, body, decryptor, out, unpad=None):
    pos, n = body
    for chunk in source.chunks(pos, n, _CHUNK):
        data = decryptor.update(chunk)
        out.write(unpad.update(data) if unpad else data)
    data = decryptor.finalize()
    if unpad:
        out.write(unpad.update(data) + unpad.finalize())
    else:
        out.write(data)
