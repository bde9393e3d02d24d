#!/bin/sh
# Sentinel's client-reconfig-script (sentinel.conf: sentinel client-reconfig-script <master> <this file>).
# Sentinel runs it on the failover's leader with
#   <master-name> <role> <state> <from-ip> <from-port> <to-ip> <to-port>
# and state "start" as soon as the promoted replica reports itself master. Make the old master
# follow the new one at once: with min-replicas-to-write 1 the old master refuses writes from the
# moment its replica left it, and the new master refuses them until a replica follows it; the
# sentinels alone demote the old master only 10-30 s later, and no write succeeds meanwhile.
# A master that is gone (crashed) cannot be told: nothing to do then.
# Password: REDISCLI_AUTH in the sentinel's environment (redis-cli reads it).
[ "$2" = leader ] && [ "$3" = start ] || exit 0
redis-cli -h "$4" -p "$5" REPLICAOF "$6" "$7" || exit 0
