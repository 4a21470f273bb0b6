/*
 * Server profile of pjproject for the softswitch's media workers.
 *
 * One worker process holds hundreds of calls: the PyPI wheel's defaults (4
 * calls, a 64-handle select() queue, 32 players and recorders) would need a
 * process per 4 calls. Sized for 1,000 calls per process: each call takes two
 * sockets (RTP, RTCP), at most one player and one recorder at a time, and, when
 * bridged, one more call slot (the agent's leg) on the same worker.
 */

/* epoll, and room for every call's RTP and RTCP socket in the media queue. */
#define PJ_IOQUEUE_MAX_HANDLES          4096
#define PJ_IOQUEUE_HAS_SAFE_UNREG       1

#define PJSUA_MAX_CALLS                 1000
/* A stopped player is destroyed a moment later (see softswitch/worker/process.py), so
 * two can exist for one call briefly. */
#define PJSUA_MAX_PLAYERS               2000
#define PJSUA_MAX_RECORDERS             1000
/* A call's stream, its player, its recorder, and headroom. */
#define PJSUA_MAX_CONF_PORTS            (PJSUA_MAX_CALLS * 4)

/* Media lines a call may carry (default 16). Every call slot holds two arrays of
 * this many media states, initialised at start: 16 cost ~21 KiB a slot, 21 MiB
 * for 1,000 slots of an idle worker. Trunks and agents' phones offer one audio
 * line; an offer with more than 4 is refused. */
#define PJMEDIA_MAX_SDP_MEDIA           4

/* Media events (a player's end among them) wait in a fixed queue for PJSIP's
 * event thread; the default 16 overflowed with hundreds of calls, and a lost
 * end of prompt left its call waiting for good. */
#define PJMEDIA_EVENT_MAX_EVENTS        4096

/* Hash tables of transactions and dialogs (2^n - 1). */
#define PJSIP_MAX_TSX_COUNT             65535
#define PJSIP_MAX_DIALOG_COUNT          65535

/* Bursts of hundreds of SIP messages and RTP from hundreds of calls. */
#define PJSIP_UDP_SO_RCVBUF_SIZE        (4 * 1024 * 1024)
#define PJSIP_UDP_SO_SNDBUF_SIZE        (4 * 1024 * 1024)

/* Recordings are evidence: the WAV writer flushes every 60 ms of audio
 * (8 kHz, 16-bit), so a killed worker loses at most that much of each tape.
 * Players read in chunks of the same size. */
#define PJMEDIA_FILE_PORT_BUFSIZE       960

/* No sound device (the bridge is clocked by the null port), no video, no SRTP
 * (the trunk side is plain RTP on a private network), no echo canceller. */
#define PJMEDIA_HAS_VIDEO               0
#define PJMEDIA_HAS_SRTP                0
#define PJMEDIA_HAS_SPEEX_AEC           0
#define PJMEDIA_HAS_WEBRTC_AEC          0

/* What pjproject's own PJ_CONFIG_MAXIMUM_SPEED profile turns off, less the
 * parts that trade safety for speed (module locking, assertions stay on).
 * Log levels 5 and 6 are compiled out; the worker runs at level 2. */
#define PJ_LOG_MAX_LEVEL                4
#define PJ_OS_HAS_CHECK_STACK           0
#define PJ_POOL_DEBUG                   0
#define PJ_DEBUG                        0
#define PJ_SCANNER_USE_BITWISE          0
