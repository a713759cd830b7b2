/**
 * What the Admin API needs from the plugin's configs: the instance that pushes to Redis
 * (the one with the shortest push_interval), set by the handler's `configure` in every
 * worker.
 */
import type { ClusterConf } from "./cluster";

let pusher: ClusterConf | undefined;

export function setClusterConf(this: void, conf: ClusterConf | undefined): void {
  pusher = conf;
}

export function clusterConf(this: void): ClusterConf | undefined {
  return pusher;
}
