using System.Diagnostics;
using System.Runtime.InteropServices;
using DistGpt.Contracts;
using DistGpt.Contracts.Telemetry;
using DistGpt.Contracts.Wire;
using DistGpt.Model;
using DistGpt.Model.Data;
using DistGpt.Model.Engine;
using DistGpt.Model.Training;

namespace DistGpt.WorkerSilo;

/// <summary>One worker per compute node: joins the coordinator, then computes gradient sums for its share of each
/// step's batch at the weights the coordinator sends, until the coordinator says the run is over.</summary>
public sealed class WorkerSilo(WorkerOptions options) : IDisposable
{
    Gpt? model;
    string? modelHash;
    bool modelInRegions;
    Corpus? corpus;
    readonly Dictionary<(int Sequences, int Replicas), IGradientComputer> workers = new();
    readonly TestFaults? faults = TestFaults.FromEnvironment(options.Name);
    volatile bool heartbeating = true;
    PeerPlane? peerPlane;      // this join's peer-plane listener, in a run with parameter shards
    ShardedWorker? sharded;    // the shard layout this worker is part of

    /// <summary>Orders from this worker's grain, waiting for (or met by) their tensors on the data plane.</summary>
    public ComputeOrders Orders { get; } = new();

    readonly CancellationTokenSource runEnded = new();
    volatile string? endReason;

    /// <summary>The coordinator (through the worker grain) said the run is over.</summary>
    public void EndRun(string reason)
    {
        endReason ??= reason;
        runEnded.Cancel();
    }

    /// <summary>0 when the run ended normally. Throws JoinRefusedException (refused) or RunFailedException (unreachable).
    /// Each (re)join: reach the coordinator's data plane, start a silo in its cluster, be admitted by the coordinator grain,
    /// open the data plane with the grain's ticket; then serve compute orders until the run ends or the link drops.</summary>
    public async Task<int> RunAsync(CancellationToken cancel)
    {
        Compute.Threads = options.Threads;
        // When it was asked to stop: the cancellation callbacks run in no set order, so the code that ends the run may
        // see the cancellation before this callback has run; whichever comes first stamps it.
        long askedAt = 0;
        await using var asked = cancel.Register(() =>
        {
            Interlocked.CompareExchange(ref askedAt, Stopwatch.GetTimestamp(), 0);
            options.Log($"{options.Name}: stopping (asked to)");
        });
        var silo = new WorkerSiloHost(options, this);
        try { return await RunUntilEndAsync(silo, cancel); }
        finally
        {
            if (!cancel.IsCancellationRequested) await silo.StopAsync(TimeSpan.FromSeconds(1));
            else
            {
                silo.Abandon();
                Interlocked.CompareExchange(ref askedAt, Stopwatch.GetTimestamp(), 0);
                options.Log($"{options.Name}: stopped {Stopwatch.GetElapsedTime(askedAt).TotalMilliseconds:F0} ms after it was asked to");
            }
        }
    }

    async Task<int> RunUntilEndAsync(WorkerSiloHost silo, CancellationToken cancel)
    {
        string? dataSha = options.DataPath == null ? null : Corpus.IdentityOf(options.DataPath);
        bool joinedBefore = false;
        DateTime? joinRetryUntil = null;
        while (true)
        {
            var deadline = DateTime.UtcNow + options.ConnectTimeout;
            // The coordinator is up when its data plane answers (it starts its silo first); this connection also tells which
            // local address reaches it, the one this worker's silo advertises.
            var probe = await CoordinatorConnector.ConnectAsync(options, deadline, cancel);
            await probe.Channel.DisposeAsync();
            FrameChannel? opened = null;
            JoinAccepted accepted;
            try
            {
                accepted = await WorkerTracing.TraceJoinAsync(options.Name, async () =>
                {
                    await silo.RestartAsync(probe.Local, probe.Remote, joinRetryUntil ?? deadline, cancel);
                    var admitted = await AdmitAsync(silo, dataSha, cancel);
                    var link = await CoordinatorConnector.ConnectAsync(options, joinRetryUntil ?? deadline, cancel);
                    opened = link.Channel;
                    await LeaveLayoutAsync();
                    if (peerPlane != null) await peerPlane.DisposeAsync();
                    peerPlane = admitted.PeerSecret == null ? null : new PeerPlane(options.Advertise ?? link.Local, options.PeerPort, admitted.PeerSecret, admitted.RunId, options.SiloTls, options.Log);
                    return await OpenDataPlaneAsync(link, admitted, joinRetryUntil ?? deadline, cancel);
                });
            }
            catch (IOException e) when (!cancel.IsCancellationRequested && DateTime.UtcNow < (joinRetryUntil ??= deadline))
            {
                // The connection was reset before the coordinator answered (typically a coordinator being killed, whose
                // listening socket still completed this connect just before it closed), or its grain did not answer yet.
                if (opened != null) await opened.DisposeAsync();
                options.Log($"{options.Name}: the join did not complete ({e.Message}); retrying");
                await Task.Delay(TimeSpan.FromMilliseconds(500), cancel);
                continue;
            }
            catch
            {
                if (opened != null) await opened.DisposeAsync();
                throw;
            }
            await using var channel = opened!;
            joinRetryUntil = null;
            using var shared = MapSharedMemory(channel, accepted);
            options.Log($"{options.Name}: {(joinedBefore ? "rejoined" : "joined")} run {Untrusted.Escape(accepted.RunId, Untrusted.IdLength)} as rank {accepted.Rank} ({accepted.ParameterCount:N0} parameters, {options.Threads} threads{(options.Backend is EngineBackend ? "" : $", backend {options.Backend.Name}")}, data {(accepted.SendsWindows ? "sent by the coordinator" : "from " + options.DataPath)}, gradients as {accepted.GradientDType.Name()}{(accepted.SharedMemory != null ? ", payloads through shared memory" : "")}{(peerPlane != null ? $", peer plane on {peerPlane.Endpoint}" : "")})");
            joinedBefore = true;
            Prepare(accepted, shared);
            bool finished;
            try { finished = await ServeAsync(channel, accepted, cancel); }
            finally { await LeaveLayoutAsync(); }
            Orders.FailAll("the data-plane connection to the coordinator ended");
            if (finished) return 0;
            options.Log($"{options.Name}: the coordinator closed the connection; reconnecting");
        }
    }

    bool SharedMemoryWanted => options.SharedMemory && SharedMemoryRegion.Directory != null;

    /// <summary>Admission by the coordinator grain, through this worker's own silo.</summary>
    async Task<JoinAccepted> AdmitAsync(WorkerSiloHost silo, string? dataSha, CancellationToken cancel)
    {
        var request = new JoinRequest(options.Name, BuildInfo.Version, BuildInfo.ProtocolVersion, options.Threads, dataSha, options.ExpectConfigHash, options.ClusterToken,
            SharedMemory: SharedMemoryWanted, Silo: silo.Address);
        JoinDecision decision;
        try { decision = await silo.Grains.GetGrain<ICoordinatorGrain>(Fabric.FabricHosting.CoordinatorSilo).Join(request).WaitAsync(TimeSpan.FromSeconds(15), cancel); }
        catch (Exception e) when (e is not OperationCanceledException || !cancel.IsCancellationRequested)
        {
            throw new IOException($"the coordinator grain did not answer: {Untrusted.Escape(e.GetBaseException().Message)}", e);
        }
        return decision.Accepted ?? throw new JoinRefusedException($"the coordinator refused {options.Name}: {Untrusted.Escape(decision.RefusedReason)}");
    }

    /// <summary>The data-plane hello with the admission's ticket; the answer adds the shared-memory regions, if offered.</summary>
    async Task<JoinAccepted> OpenDataPlaneAsync(DataPlaneLink link, JoinAccepted admitted, DateTime deadline, CancellationToken cancel)
    {
        var channel = link.Channel;
        using var answer = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        answer.CancelAfter(deadline - DateTime.UtcNow is var left && left > TimeSpan.FromSeconds(1) ? left : TimeSpan.FromSeconds(1));
        Frame? frame;
        try
        {
            await channel.SendAsync(MessageKind.Join, new DataPlaneHello(options.Name, admitted.Ticket!, SharedMemoryWanted, peerPlane?.Endpoint), answer.Token);
            frame = await channel.ReceiveAsync(answer.Token);
        }
        catch (OperationCanceledException) when (!cancel.IsCancellationRequested)
        {
            throw new RunFailedException($"the coordinator at {options.Coordinator} admitted {options.Name} but its data plane did not answer within --connect-timeout {options.ConnectTimeout.TotalSeconds:F0} s");
        }
        if (frame == null)
        {
            if (await SchemeProbe.MismatchAsync(options.Coordinator, new System.Net.IPEndPoint(link.Remote, options.Coordinator.Port)) is { } mismatch)
                throw new ConfigException(mismatch);
            throw new IOException("the coordinator closed the data-plane connection during the join");
        }
        return frame.Kind switch
        {
            MessageKind.JoinAccepted => frame.Read<JoinAccepted>(),
            MessageKind.JoinRefused => throw new IOException($"the data plane refused the admission ticket: {Untrusted.Escape(frame.Read<JoinRefused>().Reason)}"),
            _ => throw new ProtocolException($"expected JoinAccepted, got {frame.Kind}"),
        };
    }

    /// <summary>Maps the coordinator's payload regions when it offered them; the channel reads and writes payloads there.</summary>
    static SharedRegions? MapSharedMemory(FrameChannel channel, JoinAccepted accepted)
    {
        if (accepted.SharedMemory is not { } paths) return null;
        var down = SharedMemoryRegion.Open(paths.Down, paths.DownBytes);
        try
        {
            var up = SharedMemoryRegion.Open(paths.Up, paths.UpBytes);
            // Both ends have mapped the files now: unlink them, so that nothing is left in /dev/shm even if a process is killed
            // (a shared Down region was never linked).
            if (!paths.SharedDown) File.Delete(paths.Down);
            File.Delete(paths.Up);
            channel.UseSharedMemory(send: up, receive: down);
            return new SharedRegions(down, up);
        }
        catch
        {
            down.Dispose();
            throw;
        }
    }

    sealed record SharedRegions(SharedMemoryRegion Down, SharedMemoryRegion Up) : IDisposable
    {
        public void Dispose()
        {
            Down.Dispose();
            Up.Dispose();
        }
    }

    /// <summary>Builds the model (kept across reconnects to the same run and config). With shared-memory regions its weights
    /// live in the region the coordinator writes them to, and fp32 gradients in the region it reads them from, so no
    /// payload is copied on this side; such a model is bound to its connection's regions and rebuilt with the next.</summary>
    void Prepare(JoinAccepted accepted, SharedRegions? shared)
    {
        if (model != null && !modelInRegions && shared == null && modelHash == accepted.ConfigHash + accepted.Vocabulary) return;
        DisposeModel();
        unsafe
        {
            model = shared == null ? new Gpt(accepted.Config)
                : new Gpt(accepted.Config, values: n => NativeBuffer.Over((float*)shared.Down.Pointer, n),
                    grads: accepted.GradientDType == WireDType.Fp32 ? n => NativeBuffer.Over((float*)shared.Up.Pointer, n) : null);
        }
        modelInRegions = shared != null;
        modelHash = accepted.ConfigHash + accepted.Vocabulary;
        if (model.Parameters.Count != accepted.ParameterCount)
            throw new ProtocolException($"model has {model.Parameters.Count} parameters here but {accepted.ParameterCount} at the coordinator");
        // The data's SHA-256 matched the coordinator's at join, so a token directory needs no tokenizer here.
        corpus = accepted.SendsWindows ? null : Corpus.Load(options.DataPath!, Directory.Exists(options.DataPath) ? null : CharTokenizer.FromCharacters(accepted.Vocabulary));
    }

    IGradientComputer WorkerFor(int sequences, ulong seed, int replicas)
    {
        if (workers.TryGetValue((sequences, replicas), out var w)) return w;
        foreach (var old in workers.Values) old.Dispose();
        workers.Clear();
        return workers[(sequences, replicas)] = options.Backend.Create(model!, corpus?.Train ?? TokenSplit.Empty, seed, sequences, replicas > 0 ? replicas : null);
    }

    /// <summary>Serves compute requests; true when the coordinator ended the run, false when the connection dropped.</summary>
    async Task<bool> ServeAsync(FrameChannel channel, JoinAccepted run, CancellationToken cancel)
    {
        long currentStep = 0;
        var beat = TimeSpan.FromSeconds(Math.Max(0.05, run.HeartbeatSeconds / 4));
        await using var heartbeat = new Timer(_ =>
        {
            if (!heartbeating) return;
            try { channel.SendAsync(MessageKind.Heartbeat, new Heartbeat(run.RunId, Interlocked.Read(ref currentStep))).Wait(); }
            catch { /* a dead connection shows up in the receive loop */ }
        }, null, beat, beat);
        // The coordinator heartbeats too: silence while this worker waits for work or moves tensors means the link or the
        // coordinator is gone (a cut cable sends no FIN), so give up on the connection and rejoin. Not armed while computing.
        var silence = TimeSpan.FromSeconds(run.HeartbeatSeconds);
        using var endOfRun = CancellationTokenSource.CreateLinkedTokenSource(cancel, runEnded.Token);
        using var watch = new SilenceWatch(silence, endOfRun.Token);
        await using var watchdog = new Timer(_ => watch.Check(), null, beat, beat);
        try
        {
            while (true)
            {
                watch.Arm();
                var next = await channel.ReceiveAsync(watch.Token);
                if (next is not { } frame) break;
                watch.Arm(); // a frame is progress: the payload transfer gets the full allowance
                switch (frame.Kind)
                {
                    case MessageKind.Compute:
                        var request = frame.Read<ComputeRequest>();
                        Interlocked.Exchange(ref currentStep, request.Step);
                        // The grain call that orders this share: the computation starts on the payload as it lands, and the sum
                        // goes back only against the order (whose latency so overlaps the compute instead of preceding it).
                        try
                        {
                            using (var unclaimed = CancellationTokenSource.CreateLinkedTokenSource(watch.Token))
                            {
                                var order = Orders.ClaimAsync(request, unclaimed.Token);
                                try
                                {
                                    var reply = await WorkerTracing.TraceComputeAsync(request, options.Name, run.Rank, () => sharded is { } shards
                                        ? ComputeShardedAsync(channel, run, request, frame.PayloadLength, watch, order, shards)
                                        : ComputeAsync(channel, run, request, frame.PayloadLength, watch, order));
                                    (await order).Done.TrySetResult(reply);
                                }
                                catch (Exception e)
                                {
                                    if (order.IsCompletedSuccessfully) order.Result.Done.TrySetException(e);
                                    unclaimed.Cancel();
                                    throw;
                                }
                            }
                        }
                        catch (ShardLinkException e)
                        {
                            options.Log($"{options.Name}: step {request.Step}: share abandoned: {e.Message}");
                        }
                        break;
                    case MessageKind.ShardLayout:
                        await TakeLayoutAsync(channel, run, frame, watch.Token);
                        break;
                    case MessageKind.ShardUpdate:
                        ApplyUpdate(run, frame.Read<ShardUpdate>());
                        await channel.SkipPayloadAsync(frame.PayloadLength, cancel);
                        break;
                    case MessageKind.ShardStateRequest:
                        await SendShardStateAsync(channel, run, frame.Read<ShardStateRequest>(), watch.Token);
                        await channel.SkipPayloadAsync(frame.PayloadLength, cancel);
                        break;
                    case MessageKind.Shutdown:
                        options.Log($"{options.Name}: run {Untrusted.Escape(run.RunId, Untrusted.IdLength)} finished ({Untrusted.Escape(frame.Read<Shutdown>().Reason)})");
                        return true;
                    case MessageKind.Failed:
                        options.Log($"{options.Name}: the coordinator dropped this worker: {Untrusted.Escape(frame.Read<Failed>().Reason)}");
                        return false;
                    default:
                        await channel.SkipPayloadAsync(frame.PayloadLength, cancel);
                        break;
                }
            }
        }
        catch (Exception e) when (e is IOException or ProtocolException && !cancel.IsCancellationRequested)
        {
            options.Log($"{options.Name}: connection to the coordinator failed: {e.Message}");
        }
        catch (OperationCanceledException) when (runEnded.IsCancellationRequested && !cancel.IsCancellationRequested)
        {
            options.Log($"{options.Name}: run {Untrusted.Escape(run.RunId, Untrusted.IdLength)} finished ({Untrusted.Escape(endReason)})");
            return true;
        }
        catch (OperationCanceledException) when (!cancel.IsCancellationRequested)
        {
            options.Log($"{options.Name}: no word from the coordinator for {silence.TotalSeconds:F0} s");
        }
        return false;
    }

    async Task<GradientsReply> ComputeAsync(FrameChannel channel, JoinAccepted run, ComputeRequest request, long payloadLength, SilenceWatch watch,
        Task<ComputeOrders.Order> order)
    {
        var cancel = watch.Token; // armed since the frame header: covers the payload transfer
        var m = model!;
        CheckRun(request.RunId, request.ConfigHash, run, "compute request");
        long weightBytes = m.Parameters.Count * sizeof(float);
        long windowBytes = run.SendsWindows ? (long)request.Sequences * (m.Config.BlockSize + 1) * sizeof(int) : 0;
        if (payloadLength != weightBytes + windowBytes)
            throw new ProtocolException($"compute payload is {payloadLength} bytes, expected {weightBytes + windowBytes}");
        var clock = Stopwatch.StartNew();
        double receiveMs = 0;
        // Over a socket, with no token windows behind them, the forward starts while the weights are still arriving: each
        // op waits only for the ones it reads (they come in forward order). Otherwise the whole payload lands first.
        var arrival = windowBytes == 0 && !channel.HasSharedMemory ? new WeightsArrival() : null;
        async Task ReceiveWeightsAsync()
        {
            using var receiving = WorkerTracing.StartReceive(payloadLength);
            try
            {
                await channel.ReadPayloadAsync(NativeMemoryManager.Bytes(m.Parameters.Values), cancel,
                    arrival == null ? null : bytes => arrival.Advance(bytes / sizeof(float)));
            }
            catch (Exception e)
            {
                arrival?.Fail(e);
                throw;
            }
            receiveMs = clock.Elapsed.TotalMilliseconds;
            if (arrival != null) watch.Disarm(); // the payload is in: silence is expected while computing
        }
        var weightsIn = ReceiveWeightsAsync();
        int[]? windows = null;
        if (arrival == null)
        {
            await weightsIn;
            if (windowBytes > 0)
            {
                var bytes = new byte[windowBytes];
                await channel.ReadPayloadAsync(bytes, cancel);
                windows = MemoryMarshal.Cast<byte, int>(bytes).ToArray();
                receiveMs = clock.Elapsed.TotalMilliseconds;
            }
            watch.Disarm(); // after the windows too: the watch covers the whole payload
        }

        FaultsBeforeComputing(request.Step);
        var worker = WorkerFor(request.Sequences, run.Seed, run.ReplicasPerShare);
        // Over a socket, the sum goes out in buckets as the backward finishes them; through shared memory there is no
        // transfer to overlap (the coordinator reads the region once the reply says it is complete).
        var uploader = run.GradientBucketBytes > 0 && !channel.HasSharedMemory
            ? new BucketUploader(channel, worker.UseBuckets(Math.Max(1, run.GradientBucketBytes / sizeof(float))), m.Parameters.Grads,
                run.GradientDType, run.GradientDType == WireDType.Bf16 ? NarrowingBuffer(m.Parameters.Grads) : null,
                b => new GradientsBucket(run.RunId, request.Step, request.WeightsVersion, run.ConfigHash, b.Offset, b.Count))
            : null;
        var uploading = uploader?.RunAsync(TamperBucket(request.Step, uploader, channel), cancel);
        Computed done;
        try { done = Run(worker, request, windows, uploader == null ? null : uploader.Ready, arrival); }
        catch (Exception e)
        {
            uploader?.Abandon(e);
            if (arrival != null) await weightsIn; // the transfer's own failure, if that is what stopped the forward
            throw;
        }
        await weightsIn; // complete by now: the forward has read every weight
        var reply = done.Reply(run, request, receiveMs);
        await order; // no sum leaves without the grain's order for it
        if (uploader == null)
        {
            await SendWholeAsync(channel, run, reply, watch);
            return reply;
        }
        using (WorkerTracing.StartUpload(reply, (long)m.Parameters.Count * run.GradientDType.Size())) // the part not overlapped
        {
            watch.Arm();
            await uploading!;
            await channel.SendAsync(MessageKind.Gradients, reply, cancel);
        }
        return reply;
    }

    /// <summary>A share's forward and backward, with their timings (ms).</summary>
    sealed record Computed(GradientSum Sum, double ComputeMs, double ForwardMs, double BackwardMs, double WeightsWaitMs)
    {
        public GradientsReply Reply(JoinAccepted run, ComputeRequest request, double receiveMs) =>
            new(run.RunId, request.Step, request.WeightsVersion, run.ConfigHash, Sum.LossSum, Sum.Tokens, ComputeMs, ForwardMs, BackwardMs, receiveMs,
                WeightsWaitMs: WeightsWaitMs);
    }

    static Computed Run(IGradientComputer worker, ComputeRequest request, int[]? windows, Action<GradientBucket>? bucketReady, WeightsArrival? arrival)
    {
        double forwardAt = 0, backwardAt = 0;
        var clock = Stopwatch.StartNew();
        void Phase(string p) { if (p == "forward") forwardAt = clock.Elapsed.TotalMilliseconds; else backwardAt = clock.Elapsed.TotalMilliseconds; }
        var sum = windows == null ? worker.Compute(request.Step, request.FirstSequence, Phase, bucketReady, arrival)
            : worker.ComputeOnWindows(request.Step, request.FirstSequence, windows, Phase, bucketReady);
        double ms = clock.Elapsed.TotalMilliseconds;
        return new Computed(sum, ms, backwardAt - forwardAt, ms - backwardAt, arrival?.Waited.TotalMilliseconds ?? 0);
    }

    static void CheckRun(string runId, string configHash, JoinAccepted run, string what)
    {
        if (runId != run.RunId || configHash != run.ConfigHash)
            throw new ProtocolException($"{what} for run {Untrusted.Quote(runId, Untrusted.IdLength)}/{Untrusted.Quote(configHash, Untrusted.IdLength)}, joined {Untrusted.Quote(run.RunId, Untrusted.IdLength)}/{Untrusted.Quote(run.ConfigHash, Untrusted.IdLength)}");
    }

    /// <summary>With parameter shards: the weights come from the range holders (waited for, not in the payload), and range k
    /// of the sum goes to range k's holder; the reply to the coordinator carries the loss and the peer-plane bytes only.</summary>
    async Task<GradientsReply> ComputeShardedAsync(FrameChannel channel, JoinAccepted run, ComputeRequest request, long payloadLength, SilenceWatch watch,
        Task<ComputeOrders.Order> order, ShardedWorker shards)
    {
        var cancel = watch.Token;
        var m = model!;
        CheckRun(request.RunId, request.ConfigHash, run, "compute request");
        long windowBytes = run.SendsWindows ? (long)request.Sequences * (m.Config.BlockSize + 1) * sizeof(int) : 0;
        if (payloadLength != windowBytes) throw new ProtocolException($"compute payload is {payloadLength} bytes, expected {windowBytes} (the weights come from the shard holders)");
        if (request.Sequences < 1 || request.FirstSequence % request.Sequences != 0) throw new ProtocolException($"share [{request.FirstSequence}, +{request.Sequences}) is not a whole share");
        var clock = Stopwatch.StartNew();
        int[]? windows = null;
        if (windowBytes > 0)
        {
            var bytes = new byte[windowBytes];
            await channel.ReadPayloadAsync(bytes, cancel);
            windows = MemoryMarshal.Cast<byte, int>(bytes).ToArray();
        }
        watch.Disarm(); // the coordinator may be quiet now: the weights come from the peers
        var patience = TimeSpan.FromSeconds(Math.Max(10, 3 * run.HeartbeatSeconds));
        // The forward starts on the weights as they land (each op waits for the values it reads), unless the coordinator sends
        // token windows (that path has no such waits): then all first.
        var arrival = windows == null ? shards.ArrivalOf(request.WeightsVersion, patience) : null;
        if (arrival == null) using (WorkerTracing.StartReceive(0)) await shards.WeightsAsync(request.WeightsVersion, patience, cancel);
        double receiveMs = clock.Elapsed.TotalMilliseconds;
        FaultsBeforeComputing(request.Step);
        var worker = WorkerFor(request.Sequences, run.Seed, run.ReplicasPerShare);
        var grads = m.Parameters.Grads;
        int share = (int)(request.FirstSequence / request.Sequences);
        var narrowed = run.GradientDType == WireDType.Bf16 ? NarrowingBuffer(grads) : null;
        // Range by range as the backward finishes them (not with a fault to inject into the finished sum).
        var upload = run.GradientBucketBytes > 0 && faults?.At("nan", request.Step) != true
            ? new RangeUpload(shards, request.Step, share, grads, narrowed, worker.UseBuckets(Math.Max(1, run.GradientBucketBytes / sizeof(float))))
            : null;
        var uploading = upload?.RunAsync(cancel);
        Computed done;
        try { done = Run(worker, request, windows, upload == null ? null : upload.Ready, arrival); }
        catch (IOException e) when (e.InnerException is ShardLinkException link)
        {
            upload?.Abandon(e);
            throw link;
        }
        catch (Exception e)
        {
            upload?.Abandon(e);
            throw;
        }
        await order; // no sum leaves without the grain's order for it
        if (faults?.At("nan", request.Step) == true) grads.Span[0] = float.NaN;
        var reply = done.Reply(run, request, receiveMs);
        using (WorkerTracing.StartUpload(reply, (long)m.Parameters.Count * run.GradientDType.Size())) // the part not overlapped
            await (uploading ?? shards.SendGradientsAsync(request.Step, share, grads, narrowed, cancel));
        var (peerSent, peerReceived) = shards.TakePeerBytes(request.Step - 1); // complete: this step's weights are in
        reply = reply with { PeerSent = peerSent, PeerReceived = peerReceived };
        await channel.SendAsync(MessageKind.Gradients, reply, cancel);
        return reply;
    }

    /// <summary>A shard layout from the coordinator: load the weights (and the held range's moments) from its payload, link
    /// to every other holder, say so.</summary>
    async Task TakeLayoutAsync(FrameChannel channel, JoinAccepted run, Frame frame, CancellationToken cancel)
    {
        var layout = frame.Read<ShardLayout>();
        if (peerPlane == null || run.PeerSecret == null) throw new ProtocolException("a shard layout in a run without parameter shards");
        CheckRun(layout.RunId, layout.ConfigHash, run, "shard layout");
        await LeaveLayoutAsync();
        var next = ShardedWorker.Create(layout, model!, run.GradientDType, options.Name, norm => channel.SendAsync(MessageKind.ShardNorm, norm), options.Log);
        try
        {
            long expected = next.PayloadTargets().Sum(t => (long)t.Length);
            if (frame.PayloadLength != expected) throw new ProtocolException($"shard layout payload is {frame.PayloadLength} bytes, expected {expected}");
            foreach (var target in next.PayloadTargets()) await channel.ReadPayloadAsync(target, cancel);
            next.PayloadLanded();
            sharded = next;
            peerPlane.Serve(next);
            await next.ConnectAsync(run.PeerSecret, options.SiloTls, cancel);
        }
        catch
        {
            await LeaveLayoutAsync();
            if (sharded != next) await next.DisposeAsync();
            throw;
        }
        options.Log($"{options.Name}: shard layout {layout.LayoutId}: {layout.Ranges.Count} ranges, holding {layout.Holding.Count} ({layout.Holding.Sum(k => layout.Ranges[k].Length):N0} parameters), replicas of {layout.Replicating.Count}");
        await channel.SendAsync(MessageKind.ShardReady, new ShardReady(run.RunId, layout.LayoutId), cancel);
    }

    async Task LeaveLayoutAsync()
    {
        peerPlane?.Serve(null);
        if (sharded != null) await sharded.DisposeAsync();
        sharded = null;
    }

    /// <summary>The coordinator's go for the held range's update: applied now, the range sent to the peers in the background.</summary>
    void ApplyUpdate(JoinAccepted run, ShardUpdate update)
    {
        if (update.RunId != run.RunId) throw new ProtocolException($"shard update for run {Untrusted.Quote(update.RunId, Untrusted.IdLength)}");
        if (sharded is not { } shards || shards.Holders.Count + shards.Replicas.Count == 0) throw new ProtocolException("a shard update for a worker that holds no range");
        if (faults?.At("stall-update", update.Step) == true) Stall($"before updating step {update.Step}");
        foreach (var holder in shards.Holders.Values) _ = holder.Apply(update);
        foreach (var replica in shards.Replicas.Values) replica.Update(update);
    }

    /// <summary>The held range (and its moments, when asked) back to the coordinator, for evaluation and checkpoints.</summary>
    async Task SendShardStateAsync(FrameChannel channel, JoinAccepted run, ShardStateRequest request, CancellationToken cancel)
    {
        if (request.RunId != run.RunId) throw new ProtocolException($"shard state request for run {Untrusted.Quote(request.RunId, Untrusted.IdLength)}");
        Memory<byte> weights, m, v;
        ShardState header;
        if (sharded?.Holders.GetValueOrDefault(request.Range) is { } holder)
        {
            var r = holder.Range;
            weights = NativeMemoryManager.Bytes(model!.Parameters.Values, r.Offset, r.Length);
            (m, v) = (holder.MomentBytes(false), holder.MomentBytes(true));
            header = new ShardState(run.RunId, sharded.LayoutId, r.Index, holder.Version, holder.StepCount, r.Offset, r.Length, request.Moments);
        }
        else if (sharded?.Replicas.GetValueOrDefault(request.Range) is { } replica)
        {
            await replica.WaitForAsync(request.Version, TimeSpan.FromSeconds(Math.Max(10, 3 * run.HeartbeatSeconds)), cancel);
            var r = replica.Range;
            (weights, m, v) = (replica.WeightBytes, replica.MomentBytes(false), replica.MomentBytes(true));
            header = new ShardState(run.RunId, sharded.LayoutId, r.Index, replica.Version, replica.StepCount, r.Offset, r.Length, request.Moments);
        }
        else throw new ProtocolException($"a request for parameter range {request.Range}, which this worker neither holds nor keeps the replica of");
        if (request.Moments) await channel.SendAsync(MessageKind.ShardState, header, cancel, weights, m, v);
        else await channel.SendAsync(MessageKind.ShardState, header, cancel, weights);
    }

    /// <summary>The gradient sum in one frame, after the backward (shared memory, or --bucket-cap-mb 0).</summary>
    async Task SendWholeAsync(FrameChannel channel, JoinAccepted run, GradientsReply reply, SilenceWatch watch)
    {
        var grads = model!.Parameters.Grads;
        if (faults?.At("nan", reply.Step) == true) grads.Span[0] = float.NaN;
        var gradients = Encode(grads, run.GradientDType);
        using var upload = WorkerTracing.StartUpload(reply, gradients.Length);
        watch.Arm();
        if (faults?.At("short", reply.Step) == true) gradients = gradients[..^4];
        if (faults?.At("stall-upload", reply.Step) == true)
        {
            // Two payload parts, so the hook (after each chunk) fires once half the gradients are on the wire.
            channel.AfterPayloadChunk = () => Stall($"mid-upload at step {reply.Step}");
            int half = gradients.Length / 2;
            await channel.SendAsync(MessageKind.Gradients, reply, watch.Token, gradients[..half], gradients[half..]);
            return;
        }
        await channel.SendAsync(MessageKind.Gradients, reply, watch.Token, gradients);
    }

    /// <summary>hang (this thread blocks for good and the heartbeats stop) or stall-compute, before a share's computation.</summary>
    void FaultsBeforeComputing(long step)
    {
        if (faults?.At("hang", step) == true) { heartbeating = false; Thread.Sleep(Timeout.Infinite); }
        if (faults?.At("stall-compute", step) == true) Stall($"before computing step {step}");
    }

    /// <summary>A stall fault: this thread blocks for good, the heartbeats going on, so a test can kill the process exactly
    /// <paramref name="where"/>.</summary>
    void Stall(string where)
    {
        options.Log($"{options.Name}: fault injected: stalled {where}");
        Thread.Sleep(Timeout.Infinite);
    }

    /// <summary>The streamed upload's fault injection: nan poisons the first bucket sent, short cuts 4 bytes off the last,
    /// stall-upload blocks once the middle bucket is on the wire, before the rest and the reply (heartbeats go on).</summary>
    Func<int, ReadOnlyMemory<byte>, ReadOnlyMemory<byte>>? TamperBucket(long step, BucketUploader uploader, FrameChannel channel)
    {
        string? kind = faults?.KindAt(step);
        if (kind == null) return null;
        return (index, payload) =>
        {
            if (kind == "nan" && uploader.Sent == 0)
            {
                var poisoned = payload.ToArray();
                BitConverter.TryWriteBytes(poisoned.AsSpan(0, sizeof(float)), float.NaN); // as bf16: 0 then NaN (its top half)
                return poisoned;
            }
            if (kind == "short" && index == uploader.Count - 1) return payload[..^4];
            if (kind == "stall-upload" && index == uploader.Count / 2)
                channel.AfterPayloadChunk = () => Stall($"mid-upload at step {step}");
            return payload;
        };
    }

    /// <summary>The gradient payload in the run's wire dtype: the float32 buffer itself, or its bfloat16 narrowing in a
    /// buffer kept for the next step.</summary>
    ReadOnlyMemory<byte> Encode(NativeBuffer grads, WireDType dtype) =>
        BucketUploader.Encode(grads, 0, grads.Length, dtype, dtype == WireDType.Bf16 ? NarrowingBuffer(grads) : null);

    /// <summary>2 bytes per gradient value, kept for the next step.</summary>
    byte[] NarrowingBuffer(NativeBuffer grads)
    {
        int bytes = checked((int)grads.Length * sizeof(ushort));
        if (narrowed?.Length != bytes) narrowed = GC.AllocateUninitializedArray<byte>(bytes, pinned: true);
        return narrowed;
    }

    byte[]? narrowed;

    /// <summary>Cancels its token when armed for longer than the allowed silence (a dead link or coordinator).</summary>
    sealed class SilenceWatch(TimeSpan silence, CancellationToken outer) : IDisposable
    {
        readonly CancellationTokenSource cts = CancellationTokenSource.CreateLinkedTokenSource(outer);
        long armedAt;

        public CancellationToken Token => cts.Token;
        public void Arm() => Interlocked.Exchange(ref armedAt, Stopwatch.GetTimestamp());
        public void Disarm() => Interlocked.Exchange(ref armedAt, 0);

        public void Check()
        {
            long since = Interlocked.Read(ref armedAt);
            if (since != 0 && Stopwatch.GetElapsedTime(since) > silence) cts.Cancel();
        }

        public void Dispose() => cts.Dispose();
    }

    void DisposeModel()
    {
        foreach (var w in workers.Values) w.Dispose();
        workers.Clear();
        model?.Dispose();
        model = null;
    }

    public void Dispose()
    {
        LeaveLayoutAsync().GetAwaiter().GetResult();
        peerPlane?.DisposeAsync().AsTask().GetAwaiter().GetResult();
        DisposeModel();
    }
}
