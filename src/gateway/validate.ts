/**
 * `luajit validate.lua <gateway.json> <config.json>`: validates a declarative config the
 * way the gateway will at start, without nginx, so `krs gateway start` can refuse a bad
 * file with one clear line before anything is started. Exit 0 and no output when valid;
 * exit 1 and the error on stderr otherwise.
 */
import * as cjson from "cjson.safe";
import { loadDeclarative, loaderEnv } from "./config";

declare const arg: string[];

function readJson(this: void, path: string): unknown {
  const [file, err] = io.open(path, "r");
  if (file === undefined) {
    io.stderr.write(`could not read ${path}: ${err}\n`);
    os.exit(2);
  }
  const text = file.read("*a") as string;
  file.close();
  const [value, decodeErr] = cjson.decode(text);
  if (value === undefined) {
    io.stderr.write(`could not parse ${path}: ${decodeErr}\n`);
    os.exit(2);
  }
  return value;
}

const options = readJson(arg[0]) as { plugins: string[] };
const [config, err] = loadDeclarative(readJson(arg[1]), loaderEnv(options.plugins));
if (config === undefined) {
  io.stderr.write(`invalid declarative config: ${err}\n`);
  os.exit(1);
}
os.exit(0);
