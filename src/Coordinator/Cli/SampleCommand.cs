using System.CommandLine;
using DistGpt.Model;
using DistGpt.Model.Data;
using DistGpt.Model.IO;

namespace DistGpt.Coordinator.Cli;

/// <summary>`distgpt sample`: generate text from a checkpoint (nanoGPT's sample.py).</summary>
public static class SampleCommand
{
    public static Command Create()
    {
        var checkpoint = new Option<string>("--checkpoint") { Description = "a run's --out directory or its ckpt directory", DefaultValueFactory = _ => "out" };
        var prompt = new Option<string>("--prompt") { Description = "text to continue", DefaultValueFactory = _ => "\n" };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "tokens to generate (characters for a char model)", DefaultValueFactory = _ => 500 };
        var temperature = new Option<float>("--temperature") { Description = "softmax temperature (< 1: more conservative)", DefaultValueFactory = _ => 0.8f };
        var topK = new Option<int>("--top-k") { Description = "sample only from the k likeliest tokens (0: all)", DefaultValueFactory = _ => 200 };
        var seed = new Option<ulong>("--seed") { Description = "sampling seed", DefaultValueFactory = _ => 1 };
        var threads = ThreadsOption.Create(defaultThreads: 1);
        var command = new Command("sample", "Generate text from a checkpoint.") { checkpoint, prompt, maxNew, temperature, topK, seed, threads };
        command.SetAction((r, _) => ExitCodes.Guard(() =>
        {
            // Every numeric flag of sample, checked here before anything is loaded.
            Check.InRange(r.GetValue(maxNew), 0, 1 << 24, "--max-new-tokens");
            Check.InRange(r.GetValue(topK), 0, 1 << 20, "--top-k");
            Check.Positive(r.GetValue(temperature), "--temperature");
            Compute.Threads = ThreadsOption.Read(r, threads);
            var ckpt = Checkpoint.Open(r.GetValue(checkpoint)!);
            using var model = new Gpt(ckpt.State.Config with { Dropout = 0 });
            ckpt.LoadWeights(model);
            var tokenizer = ckpt.State.CreateTokenizer();
            using var generator = new Generator(model, tokenizer.VocabSize);
            var ids = generator.Generate(tokenizer.Encode(r.GetValue(prompt)!), r.GetValue(maxNew), r.GetValue(temperature), r.GetValue(topK), r.GetValue(seed));
            Console.WriteLine(tokenizer.Decode(ids));
            return 0;
        }));
        return command;
    }
}
